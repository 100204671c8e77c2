// The shared runtime test's function (tests/samples/deno), Appwrite 0.13 style.

export default async function (req: any, res: any) {
  const payload: string = req.payload;
  switch (payload) {
    case "echo": {
      const env: Record<string, string> = {};
      for (const [key, value] of Object.entries(req.env as Record<string, string>)) {
        if (key.startsWith("APPWRITE_FUNCTION_") || key === "GREETING") env[key] = value;
      }
      return res.json({ payload, headers: req.headers, env });
    }
    case "unicode":
      return res.send("héllo ☃ " + [...payload].length);
    case "print":
      console.log("to stdout");
      console.error("to stderr");
      return res.send("printed");
    case "child": {
      const child = new Deno.Command("sh", {
        args: ["-c", "echo from a child"],
        stdin: "null",
        stdout: "inherit",
        stderr: "inherit",
      });
      await child.output();
      return res.send("ran");
    }
    case "status":
      return res.send("short and stout", 418);
    case "raise":
      throw new Error("boom");
    case "sleep":
      await new Promise((resolve) => setTimeout(resolve, 30_000));
      return res.send("late");
    default:
      return res.send("default:" + payload);
  }
}
