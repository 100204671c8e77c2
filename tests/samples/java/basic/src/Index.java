import java.util.HashMap;
import java.util.Map;

/*
  Appwrite 0.13 style: this file is the body of the class Index (the build
  adds the class around it).

  'req' has getPayload() (the request body as a string), getEnv() (the
  function's variables) and getHeaders().
  'res' has send(text[, status]) and json(map[, status]); status defaults
  to 200. An uncaught exception makes a 500 response.
*/

public RuntimeResponse main(RuntimeRequest req, RuntimeResponse res) throws Exception {
    String payload = req.getPayload();
    switch (payload) {
        case "echo": {
            Map<String, String> env = new HashMap<>();
            for (Map.Entry<String, String> entry : req.getEnv().entrySet()) {
                String key = entry.getKey();
                if (key.startsWith("APPWRITE_FUNCTION_") || key.equals("GREETING")) {
                    env.put(key, entry.getValue());
                }
            }
            Map<String, Object> data = new HashMap<>();
            data.put("payload", payload);
            data.put("headers", req.getHeaders());
            data.put("env", env);
            return res.json(data);
        }
        case "unicode":
            return res.send("héllo ☃ " + payload.codePointCount(0, payload.length()));
        case "print":
            System.out.println("to stdout");
            System.err.println("to stderr");
            return res.send("printed");
        case "child":
            new ProcessBuilder("sh", "-c", "echo from a child").inheritIO().start().waitFor();
            return res.send("ran");
        case "status":
            return res.send("short and stout", 418);
        case "raise":
            throw new RuntimeException("boom");
        case "sleep":
            Thread.sleep(30_000);
            return res.send("late");
        default:
            return res.send("default:" + payload);
    }
}
