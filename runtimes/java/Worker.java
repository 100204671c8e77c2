/*
 * The Java worker of the Functions runtime (Appwrite 0.13-compatible).
 *
 * Started by the supervisor (runtimes/python/server.py --language java -- ...)
 * with the numbers of two file descriptors appended to its command:
 *
 *     java [options] /opt/functions-runtime/java/Worker.java R W
 *
 * It is run by the Java source launcher (the file is compiled in memory when
 * the JVM starts), because a container starts its worker before any code
 * exists and the runtime directory is read-only: there is nowhere to keep a
 * compiled worker. That costs about 0.9 s at start (Java 17, 1 CPU, C1
 * only; a precompiled worker would start in 0.1 s). It uses only the JDK.
 *
 * It reads newline-delimited JSON requests from fd R and writes exactly one
 * JSON line per request on fd W, echoing the request's "id":
 *   {"type":"ping"}    -> {"ok":true,"version":"17.0.15"}
 *   {"type":"load","codeDir":..,"entrypoint":"src/Index.java"} -> {"ok":true} | {"ok":false,"error":..}
 *   {"type":"execute","payload":..,"env":{..},"headers":{..}}
 *                      -> {"statusCode":..,"body":..,"error":..}
 * It exits when R ends.
 *
 * The function's code is compiled by the build (build.sh, Build.java) into
 * <codeDir>/.classes together with the runtime's RuntimeRequest and
 * RuntimeResponse (runtimes/java/api/); <codeDir>/.classes/.sources maps each
 * compiled source file to its class. At load, the worker opens a class loader
 * over .classes and <codeDir>/libs/*.jar whose parent is the platform class
 * loader (so the function sees neither the worker nor the launcher), loads
 * the entrypoint's class, and finds main(RuntimeRequest, RuntimeResponse) in
 * it. The function's RuntimeRequest and RuntimeResponse are the classes it
 * was compiled against, loaded by that class loader; the worker has no such
 * classes of its own and calls them by reflection (a constructor, getBody(),
 * getStatusCode(), isSet()), so there is exactly one definition of each.
 *
 * What main returns: res (or any RuntimeResponse) after send/json; null
 * when res.send/res.json was called; a String (status 200) or a Map, List or
 * array (res.json's JSON, status 200). Anything else, or no response at all,
 * is a 500 with an error saying so. An exception thrown by main (or by the
 * class's initialisation at load) is reported with its stack trace, without
 * the worker's and the reflection's frames, at most 64 frames each.
 *
 * main may be static or an instance method; for an instance method, one
 * instance is made at load (with the class's no-argument constructor) and
 * serves every execution of the container, as the module state of other
 * languages does.
 *
 * What Java cannot do: overlay the process environment (System.getenv() is
 * immutable; an execution's variables are in req.getEnv() only) and change
 * the working directory (the container starts the worker in the code
 * directory; load does not chdir). System.exit() in a function ends the
 * worker, and the supervisor then discards the container.
 */

import java.io.BufferedOutputStream;
import java.io.ByteArrayOutputStream;
import java.io.FileDescriptor;
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.PrintStream;
import java.lang.reflect.Array;
import java.lang.reflect.Constructor;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.net.URL;
import java.net.URLClassLoader;
import java.nio.charset.StandardCharsets;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

public final class Worker {
    private static final PrintStream OUT = new PrintStream(
            new BufferedOutputStream(new FileOutputStream(FileDescriptor.out), 8192), true, StandardCharsets.UTF_8);
    private static final PrintStream ERR = new PrintStream(
            new BufferedOutputStream(new FileOutputStream(FileDescriptor.err), 8192), true, StandardCharsets.UTF_8);

    private Method main;
    private Object instance;
    private Constructor<?> requestType;
    private Constructor<?> responseType;
    private Method getBody, getStatusCode, isSet, json, toJson;

    public static void main(String[] args) throws IOException {
        if (args.length != 2) {
            ERR.println("usage: java Worker.java REQUEST-FD REPLY-FD");
            ERR.flush();
            Runtime.getRuntime().halt(2);
        }
        // UTF-8 whatever the locale; println flushes, print waits for flushAll().
        System.setOut(OUT);
        System.setErr(ERR);
        Runtime.getRuntime().addShutdownHook(new Thread(Worker::flushAll)); // System.exit() in a function
        InputStream requests = new FileInputStream(fdPath(args[0]));
        OutputStream replies = new FileOutputStream(fdPath(args[1]));
        Worker worker = new Worker();
        ByteArrayOutputStream line = new ByteArrayOutputStream();
        byte[] chunk = new byte[1 << 16];
        int start = 0, end = 0;
        while (true) {
            // One request line (bytes up to "\n"), however it was split into reads.
            boolean complete = false;
            while (!complete) {
                if (start == end) {
                    end = requests.read(chunk);
                    start = 0;
                    if (end < 0) {
                        flushAll();
                        Runtime.getRuntime().halt(0); // the supervisor went away
                    }
                }
                int i = start;
                while (i < end && chunk[i] != '\n') i++;
                line.write(chunk, start, i - start);
                complete = i < end;
                start = complete ? i + 1 : i;
            }
            byte[] data = line.toByteArray();
            line = data.length > (1 << 20) ? new ByteArrayOutputStream() : line; // do not keep a big buffer
            line.reset();
            worker.answer(data, replies);
        }
    }

    /** fd `number` opened again by name: Java has no public way to wrap a descriptor number. */
    private static String fdPath(String number) throws IOException {
        int fd;
        try {
            fd = Integer.parseInt(number);
        } catch (NumberFormatException e) {
            throw new IOException("not a file descriptor number: " + number);
        }
        String path = "/proc/self/fd/" + fd;
        return Files.exists(Paths.get(path)) ? path : "/dev/fd/" + fd;
    }

    static void flushAll() {
        for (PrintStream stream : new PrintStream[] {System.out, System.err, OUT, ERR}) {
            try {
                stream.flush();
            } catch (RuntimeException ignored) {
                // a stream the function set; ours stay
            }
        }
    }

    private void answer(byte[] data, OutputStream replies) throws IOException {
        Object id = null;
        Map<String, Object> out;
        try {
            Object msg = Json.parse(new String(data, StandardCharsets.UTF_8));
            if (msg instanceof Map) {
                id = ((Map<?, ?>) msg).get("id");
                out = handle((Map<?, ?>) msg);
            } else {
                out = failure("runtime error: the request is not a JSON object");
            }
        } catch (Json.Invalid e) {
            out = failure("runtime error: the request is not JSON: " + e.getMessage());
        } catch (Throwable e) { // a bug here: say so, the supervisor decides
            out = failure("runtime error: " + trace(e, false));
        }
        flushAll();
        out.put("id", id);
        byte[] reply;
        try {
            reply = (Json.write(out) + "\n").getBytes(StandardCharsets.UTF_8);
        } catch (Throwable e) { // e.g. out of memory for a huge body
            out.clear();
            out.put("ok", false);
            out.put("statusCode", 500);
            out.put("body", "");
            out.put("error", "runtime error: the reply could not be encoded: " + e);
            out.put("id", id);
            reply = (Json.write(out) + "\n").getBytes(StandardCharsets.UTF_8);
        }
        replies.write(reply);
        replies.flush();
    }

    private static Map<String, Object> failure(String error) {
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("ok", false);
        out.put("error", error);
        return out;
    }

    private Map<String, Object> handle(Map<?, ?> msg) throws Exception {
        Object kind = msg.get("type");
        if ("execute".equals(kind)) {
            return execute(msg);
        }
        if ("load".equals(kind)) {
            return load(msg);
        }
        if ("ping".equals(kind)) {
            Map<String, Object> out = new LinkedHashMap<>();
            out.put("ok", true);
            out.put("version", System.getProperty("java.version"));
            return out;
        }
        return failure("unknown message type: " + Json.write(kind));
    }

    // ---------------------------------------------------------------- load

    private Map<String, Object> load(Map<?, ?> msg) throws Exception {
        if (main != null) {
            return failure("code already loaded");
        }
        Object dirValue = msg.get("codeDir"), entryValue = msg.get("entrypoint");
        Path codeDir = Paths.get(dirValue instanceof String && !((String) dirValue).isEmpty()
                ? (String) dirValue : "/code").toAbsolutePath().normalize();
        String entry = entryValue instanceof String && !((String) entryValue).isEmpty()
                ? (String) entryValue : "src/Index.java";
        Path relative = Paths.get(entry).normalize();
        if (relative.isAbsolute() || relative.startsWith("..") || relative.toString().isEmpty()) {
            return failure("entrypoint must be inside the code directory: " + entry);
        }
        Path source = codeDir.resolve(relative);
        if (!Files.isRegularFile(source)) {
            return failure("entrypoint not found: " + source);
        }
        if (!relative.getFileName().toString().endsWith(".java")) {
            return failure("entrypoint must be a .java file: " + entry);
        }
        Path classes = codeDir.resolve(".classes");
        Path index = classes.resolve(".sources");
        if (!Files.isRegularFile(index)) {
            return failure("the code is not compiled: " + index + " is missing (the build, "
                    + "runtimes/java/build.sh, compiles the code into .classes)");
        }
        String wanted = relative.toString().replace('\\', '/');
        String className = null, root = null;
        for (String line : Files.readAllLines(index, StandardCharsets.UTF_8)) {
            String[] parts = line.split("\t");
            if (parts.length == 2 && parts[0].equals("root")) {
                root = parts[1];
            } else if (parts.length == 3 && parts[0].equals("source") && parts[1].equals(wanted)) {
                className = parts[2];
            }
        }
        if (className == null) {
            return failure(entry + " was not compiled by the build: the build compiles the .java files under "
                    + (root == null || root.equals(".") ? "the code directory" : root + "/")
                    + " (see runtimes/java/build.sh)");
        }
        List<URL> urls = new ArrayList<>();
        urls.add(classes.toUri().toURL());
        Path libs = codeDir.resolve("libs");
        if (Files.isDirectory(libs)) {
            List<Path> jars = new ArrayList<>();
            try (DirectoryStream<Path> found = Files.newDirectoryStream(libs, "*.jar")) {
                for (Path jar : found) jars.add(jar);
            }
            jars.sort(null);
            for (Path jar : jars) urls.add(jar.toUri().toURL());
        }
        ClassLoader loader = new URLClassLoader(urls.toArray(new URL[0]),
                ClassLoader.getPlatformClassLoader());
        Class<?> request, response, cls;
        try {
            request = loader.loadClass("RuntimeRequest");
            response = loader.loadClass("RuntimeResponse");
        } catch (ClassNotFoundException e) {
            return failure("the build output lacks the runtime's " + e.getMessage() + " class (rebuild the code)");
        }
        Thread.currentThread().setContextClassLoader(loader);
        Method found = null;
        try {
            cls = Class.forName(className, true, loader); // runs static initialisers
            for (Class<?> c = cls; c != null && found == null; c = c.getSuperclass()) {
                for (Method m : c.getDeclaredMethods()) {
                    Class<?>[] params = m.getParameterTypes();
                    if (m.getName().equals("main") && params.length == 2 && params[0] == request
                            && params[1] == response) {
                        found = m;
                        break;
                    }
                }
            }
            if (found == null) {
                return failure(entry + " does not define main(RuntimeRequest req, RuntimeResponse res)"
                        + " (class " + className + ")");
            }
            found.setAccessible(true);
            if (!Modifier.isStatic(found.getModifiers())) {
                Constructor<?> make = cls.getDeclaredConstructor();
                make.setAccessible(true);
                instance = make.newInstance();
            }
        } catch (NoSuchMethodException e) {
            return failure(entry + ": class " + className + " has an instance main(...) but no constructor"
                    + " without arguments");
        } catch (Throwable e) { // ExceptionInInitializerError, LinkageError, the constructor's exception, ...
            return failure("failed to load " + entry + ":\n" + trace(unwrap(e), true));
        }
        requestType = request.getConstructor(String.class, Map.class, Map.class);
        responseType = response.getConstructor();
        getBody = response.getMethod("getBody");
        getStatusCode = response.getMethod("getStatusCode");
        isSet = response.getMethod("isSet");
        json = response.getMethod("json", Map.class);
        toJson = response.getMethod("toJson", Object.class);
        main = found;
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("ok", true);
        return out;
    }

    // ---------------------------------------------------------------- execute

    private Map<String, Object> execute(Map<?, ?> msg) throws Exception {
        int status = 500;
        String body = "", error = "";
        if (main == null) {
            error = "no code loaded";
        } else {
            Object payload = msg.get("payload");
            String text = payload instanceof String ? (String) payload : payload == null ? "" : Json.write(payload);
            Object req = requestType.newInstance(text, strings(msg.get("headers")), strings(msg.get("env")));
            Object res = responseType.newInstance();
            Object result = null;
            boolean failed = false;
            try {
                result = main.invoke(instance, req, res);
            } catch (InvocationTargetException e) {
                failed = true;
                error = trace(e.getCause(), true);
            }
            if (!failed) {
                try {
                    if (result == null && (Boolean) isSet.invoke(res)) {
                        result = res;
                    }
                    if (result != null && responseType.getDeclaringClass().isInstance(result)) {
                        if ((Boolean) isSet.invoke(result)) {
                            status = (Integer) getStatusCode.invoke(result);
                            body = (String) getBody.invoke(result);
                        } else {
                            error = "Function returned no response: return res.send(...) or res.json(...)";
                        }
                    } else if (result == null) {
                        error = "Function returned no response: return res.send(...) or res.json(...)";
                    } else if (result instanceof String) {
                        status = 200;
                        body = (String) result;
                    } else if (result instanceof Map) {
                        status = 200;
                        body = (String) getBody.invoke(json.invoke(res, result));
                    } else if (result instanceof Iterable || result.getClass().isArray()) {
                        status = 200;
                        body = (String) toJson.invoke(null, result);
                    } else {
                        error = "Function returned " + result.getClass().getName()
                                + "; return res.send(...) or res.json(...)";
                    }
                } catch (InvocationTargetException e) { // res.json of a returned Map failed
                    status = 500;
                    body = "";
                    error = trace(e.getCause(), true);
                }
            }
        }
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("statusCode", status);
        out.put("body", body);
        out.put("error", error);
        return out;
    }

    /** A JSON object as a map of strings (a non-string value as its JSON text). */
    private static Map<String, String> strings(Object value) {
        Map<String, String> out = new LinkedHashMap<>();
        if (value instanceof Map) {
            for (Map.Entry<?, ?> e : ((Map<?, ?>) value).entrySet()) {
                Object v = e.getValue();
                out.put(String.valueOf(e.getKey()), v instanceof String ? (String) v : Json.write(v));
            }
        }
        return out;
    }

    private static Throwable unwrap(Throwable e) {
        while ((e instanceof ExceptionInInitializerError || e instanceof InvocationTargetException)
                && e.getCause() != null) {
            e = e.getCause();
        }
        return e;
    }

    /**
     * The stack trace of `e`; with `user`, without the frames below the
     * function's code (reflection and this worker).
     */
    private static boolean isMachinery(String name) {
        return name.startsWith("jdk.internal.reflect.") || name.startsWith("java.lang.invoke.")
                || name.equals("java.lang.reflect.Method") || name.equals("java.lang.reflect.Constructor")
                || name.equals("java.lang.Class");
    }

    /**
     * The stack trace of `e` as printStackTrace() writes it, but with at most
     * 64 frames per exception (the first 48 and the last 16, so a deep
     * recursion keeps its message and where it started) and, with `user`,
     * without the frames below the function's code (the worker and the
     * reflection that called it).
     */
    static String trace(Throwable e, boolean user) {
        StringBuilder out = new StringBuilder();
        describe(out, e, new StackTraceElement[0], "", "", user, new java.util.IdentityHashMap<>());
        int end = out.length();
        while (end > 0 && out.charAt(end - 1) == '\n') end--;
        out.setLength(end);
        return out.toString();
    }

    private static void describe(StringBuilder out, Throwable e, StackTraceElement[] enclosing, String caption,
                                 String prefix, boolean user, Map<Throwable, Boolean> seen) {
        if (seen.put(e, true) != null) {
            out.append(prefix).append(caption).append("[CIRCULAR REFERENCE: ").append(e).append("]\n");
            return;
        }
        StackTraceElement[] frames = e.getStackTrace();
        int keep = frames.length;
        if (user) {
            // The function's frames are above the worker's first one and the
            // reflection (or class initialisation) frames just above that.
            int k = 0;
            while (k < frames.length && !frames[k].getClassName().equals("Worker")) k++;
            if (k < frames.length) {
                while (k > 0 && isMachinery(frames[k - 1].getClassName())) k--;
                keep = k;
            }
        }
        // Frames in common with the enclosing exception's end are left out ("... n more").
        int m = keep - 1, n = enclosing.length - 1;
        while (m >= 0 && n >= 0 && frames[m].equals(enclosing[n])) {
            m--;
            n--;
        }
        int shown = m + 1, common = keep - shown;
        String headline;
        try {
            headline = e.toString();
        } catch (RuntimeException broken) { // the function's toString() or getMessage() failed
            headline = e.getClass().getName() + " (its toString() threw " + broken.getClass().getName() + ")";
        }
        out.append(prefix).append(caption).append(headline).append('\n');
        for (int i = 0; i < shown; i++) {
            if (shown > 64 && i == 48) {
                out.append(prefix).append("\t... ").append(shown - 64).append(" frames left out ...\n");
                i = shown - 16;
            }
            out.append(prefix).append("\tat ").append(frames[i]).append('\n');
        }
        if (common > 0) {
            out.append(prefix).append("\t... ").append(common).append(" more\n");
        }
        StackTraceElement[] mine = java.util.Arrays.copyOf(frames, keep);
        for (Throwable suppressed : e.getSuppressed()) {
            describe(out, suppressed, mine, "Suppressed: ", prefix + "\t", user, seen);
        }
        if (e.getCause() != null) {
            describe(out, e.getCause(), mine, "Caused by: ", prefix, user, seen);
        }
    }
}

/** A JSON number as it was written (echoed as is, e.g. a request id). */
final class RawNumber extends Number {
    private static final long serialVersionUID = 1L;
    final String text;

    RawNumber(String text) {
        this.text = text;
    }

    @Override public int intValue() { return (int) doubleValue(); }
    @Override public long longValue() { return (long) doubleValue(); }
    @Override public float floatValue() { return (float) doubleValue(); }
    @Override public double doubleValue() { return Double.parseDouble(text); }
    @Override public String toString() { return text; }
}

/** A small strict JSON reader and compact writer (objects as LinkedHashMap, arrays as ArrayList). */
final class Json {
    private static final int MAX_DEPTH = 1000;
    private final String s;
    private int i;

    private Json(String s) {
        this.s = s;
    }

    static Object parse(String text) {
        Json p = new Json(text);
        p.space();
        Object value = p.value(0);
        p.space();
        if (p.i != p.s.length()) {
            throw p.error("unexpected text after the value");
        }
        return value;
    }

    /** Text that is not JSON. */
    static final class Invalid extends IllegalArgumentException {
        private static final long serialVersionUID = 1L;

        Invalid(String message) {
            super(message);
        }
    }

    private Invalid error(String what) {
        return new Invalid("invalid JSON at character " + i + ": " + what);
    }

    private void space() {
        while (i < s.length()) {
            char c = s.charAt(i);
            if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
            i++;
        }
    }

    private Object value(int depth) {
        if (depth > MAX_DEPTH) throw error("nested too deeply");
        if (i >= s.length()) throw error("unexpected end");
        char c = s.charAt(i);
        switch (c) {
            case '{': {
                i++;
                Map<String, Object> map = new LinkedHashMap<>();
                space();
                if (i < s.length() && s.charAt(i) == '}') {
                    i++;
                    return map;
                }
                while (true) {
                    space();
                    if (i >= s.length() || s.charAt(i) != '"') throw error("expected a string key");
                    String key = string();
                    space();
                    if (i >= s.length() || s.charAt(i) != ':') throw error("expected ':'");
                    i++;
                    space();
                    map.put(key, value(depth + 1));
                    space();
                    if (i < s.length() && s.charAt(i) == ',') {
                        i++;
                    } else if (i < s.length() && s.charAt(i) == '}') {
                        i++;
                        return map;
                    } else {
                        throw error("expected ',' or '}'");
                    }
                }
            }
            case '[': {
                i++;
                List<Object> list = new ArrayList<>();
                space();
                if (i < s.length() && s.charAt(i) == ']') {
                    i++;
                    return list;
                }
                while (true) {
                    space();
                    list.add(value(depth + 1));
                    space();
                    if (i < s.length() && s.charAt(i) == ',') {
                        i++;
                    } else if (i < s.length() && s.charAt(i) == ']') {
                        i++;
                        return list;
                    } else {
                        throw error("expected ',' or ']'");
                    }
                }
            }
            case '"':
                return string();
            case 't':
                return word("true", Boolean.TRUE);
            case 'f':
                return word("false", Boolean.FALSE);
            case 'n':
                return word("null", null);
            default:
                if (c == '-' || (c >= '0' && c <= '9')) return number();
                throw error("unexpected character");
        }
    }

    private Object word(String word, Object value) {
        if (!s.startsWith(word, i)) throw error("unexpected character");
        i += word.length();
        return value;
    }

    private Object number() {
        int start = i;
        if (s.charAt(i) == '-') i++;
        if (i < s.length() && s.charAt(i) == '0') {
            i++;
        } else if (!digits()) {
            throw error("bad number");
        }
        if (i < s.length() && s.charAt(i) == '.') {
            i++;
            if (!digits()) throw error("bad number");
        }
        if (i < s.length() && (s.charAt(i) == 'e' || s.charAt(i) == 'E')) {
            i++;
            if (i < s.length() && (s.charAt(i) == '+' || s.charAt(i) == '-')) i++;
            if (!digits()) throw error("bad number");
        }
        return new RawNumber(s.substring(start, i));
    }

    private boolean digits() {
        int start = i;
        while (i < s.length() && s.charAt(i) >= '0' && s.charAt(i) <= '9') i++;
        return i > start;
    }

    private String string() {
        i++; // the opening quote
        StringBuilder out = null;
        int run = i;
        while (true) {
            if (i >= s.length()) throw error("unterminated string");
            char c = s.charAt(i);
            if (c == '"') {
                String tail = s.substring(run, i++);
                return out == null ? tail : out.append(tail).toString();
            }
            if (c != '\\') {
                i++;
                continue;
            }
            if (out == null) out = new StringBuilder();
            out.append(s, run, i);
            if (++i >= s.length()) throw error("unterminated string");
            char e = s.charAt(i++);
            switch (e) {
                case '"': out.append('"'); break;
                case '\\': out.append('\\'); break;
                case '/': out.append('/'); break;
                case 'b': out.append('\b'); break;
                case 'f': out.append('\f'); break;
                case 'n': out.append('\n'); break;
                case 'r': out.append('\r'); break;
                case 't': out.append('\t'); break;
                case 'u': {
                    if (i + 4 > s.length()) throw error("bad \\u escape");
                    int code = 0;
                    for (int k = 0; k < 4; k++) {
                        int d = Character.digit(s.charAt(i++), 16);
                        if (d < 0) throw error("bad \\u escape");
                        code = code * 16 + d;
                    }
                    out.append((char) code); // surrogate pairs come as two escapes: two chars
                    break;
                }
                default:
                    throw error("bad escape");
            }
            run = i;
        }
    }

    static String write(Object value) {
        StringBuilder out = new StringBuilder();
        write(out, value, 0);
        return out.toString();
    }

    private static void write(StringBuilder out, Object value, int depth) {
        if (depth > MAX_DEPTH) throw new IllegalArgumentException("JSON nested too deeply");
        if (value == null) {
            out.append("null");
        } else if (value instanceof String) {
            quote(out, (String) value);
        } else if (value instanceof Boolean) {
            out.append(((Boolean) value).booleanValue());
        } else if (value instanceof RawNumber || value instanceof Integer || value instanceof Long) {
            out.append(value);
        } else if (value instanceof Number) {
            double d = ((Number) value).doubleValue();
            out.append(Double.isNaN(d) || Double.isInfinite(d) ? "null" : value.toString());
        } else if (value instanceof Map) {
            out.append('{');
            boolean first = true;
            for (Map.Entry<?, ?> e : ((Map<?, ?>) value).entrySet()) {
                if (!first) out.append(',');
                first = false;
                quote(out, String.valueOf(e.getKey()));
                out.append(':');
                write(out, e.getValue(), depth + 1);
            }
            out.append('}');
        } else if (value instanceof Iterable) {
            out.append('[');
            boolean first = true;
            for (Object item : (Iterable<?>) value) {
                if (!first) out.append(',');
                first = false;
                write(out, item, depth + 1);
            }
            out.append(']');
        } else if (value.getClass().isArray()) {
            out.append('[');
            for (int k = 0, n = Array.getLength(value); k < n; k++) {
                if (k > 0) out.append(',');
                write(out, Array.get(value, k), depth + 1);
            }
            out.append(']');
        } else {
            quote(out, value.toString());
        }
    }

    private static void quote(StringBuilder out, String s) {
        out.append('"');
        int n = s.length(), run = 0;
        for (int k = 0; k < n; k++) {
            char c = s.charAt(k);
            String escape = null;
            if (c == '"') {
                escape = "\\\"";
            } else if (c == '\\') {
                escape = "\\\\";
            } else if (c == '\n') {
                escape = "\\n";
            } else if (c == '\r') {
                escape = "\\r";
            } else if (c == '\t') {
                escape = "\\t";
            } else if (c < 0x20) {
                escape = String.format("\\u%04x", (int) c);
            } else if (Character.isSurrogate(c)) {
                if (Character.isHighSurrogate(c) && k + 1 < n && Character.isLowSurrogate(s.charAt(k + 1))) {
                    k++; // a pair: kept as is (UTF-8 encodes it as one character)
                } else {
                    escape = String.format("\\u%04x", (int) c); // lone: escaped, the output stays valid UTF-8
                }
            }
            if (escape != null) {
                out.append(s, run, k).append(escape);
                run = k + 1;
            }
        }
        out.append(s, run, n).append('"');
    }
}
