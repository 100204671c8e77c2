// Uses the local package `greeter` (packages/greeter), a dependency in
// package.json that the build installs with `deno install` (offline).
import { greet } from "greeter";

export default async function (req: any, res: any) {
  return res.send(greet(req.payload));
}
