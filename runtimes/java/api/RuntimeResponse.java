import java.lang.reflect.Array;
import java.lang.reflect.RecordComponent;
import java.math.BigDecimal;
import java.math.BigInteger;
import java.util.Map;
import java.util.regex.Pattern;

/**
 * The response of one execution (Appwrite 0.13 / open-runtimes Java contract).
 * The function gets one as `res` and returns what res.send(...) or
 * res.json(...) returns; when it returns null, the last send/json on `res`
 * counts.
 *
 * res.json serialises Maps (keys with String.valueOf), Lists and other
 * Iterables, arrays, Strings and other CharSequences, Characters, numbers
 * (NaN and infinities as null), Booleans, null, enums (by name) and records
 * (as objects of their components); any other object as the string of its
 * toString().
 *
 * Compiled into the function's build output with the function's code
 * (runtimes/java/build.sh); the worker reads it through getBody(),
 * getStatusCode() and isSet().
 */
public class RuntimeResponse {
    private static final int MAX_DEPTH = 512;
    private static final Pattern JSON_NUMBER = Pattern.compile("-?(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][+-]?[0-9]+)?");

    private String body = "";
    private int statusCode = 200;
    private boolean set;

    public RuntimeResponse() {
    }

    public RuntimeResponse(String body, int statusCode) {
        send(body, statusCode);
    }

    /** Responds with `text` and status 200. */
    public RuntimeResponse send(String text) {
        return send(text, 200);
    }

    /** Responds with `text` and `statusCode`. */
    public RuntimeResponse send(String text, int statusCode) {
        this.body = text == null ? "" : text;
        this.statusCode = statusCode;
        this.set = true;
        return this;
    }

    /** Responds with `json` serialised as JSON and status 200. */
    public RuntimeResponse json(Map<String, ?> json) {
        return json(json, 200);
    }

    /** Responds with `json` serialised as JSON and `statusCode`. */
    public RuntimeResponse json(Map<String, ?> json, int statusCode) {
        return send(toJson(json), statusCode);
    }

    public String getBody() {
        return body;
    }

    public int getStatusCode() {
        return statusCode;
    }

    /** Whether send or json has been called (or the two-argument constructor used). */
    public boolean isSet() {
        return set;
    }

    @Override
    public String toString() {
        return "RuntimeResponse(" + statusCode + ", " + body.length() + " chars)";
    }

    /** `value` as compact JSON (non-ASCII text as is). */
    public static String toJson(Object value) {
        StringBuilder out = new StringBuilder();
        write(out, value, 0);
        return out.toString();
    }

    private static void write(StringBuilder out, Object value, int depth) {
        if (depth > MAX_DEPTH) {
            throw new IllegalArgumentException("res.json: nested deeper than " + MAX_DEPTH + " levels (a cycle?)");
        }
        if (value == null) {
            out.append("null");
        } else if (value instanceof CharSequence || value instanceof Character) {
            quote(out, value.toString());
        } else if (value instanceof Boolean) {
            out.append(((Boolean) value).booleanValue() ? "true" : "false");
        } else if (value instanceof Number) {
            number(out, (Number) value);
        } else if (value instanceof Map) {
            out.append('{');
            boolean first = true;
            for (Map.Entry<?, ?> entry : ((Map<?, ?>) value).entrySet()) {
                if (!first) out.append(',');
                first = false;
                quote(out, String.valueOf(entry.getKey()));
                out.append(':');
                write(out, entry.getValue(), depth + 1);
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
            int length = Array.getLength(value);
            for (int i = 0; i < length; i++) {
                if (i > 0) out.append(',');
                write(out, Array.get(value, i), depth + 1);
            }
            out.append(']');
        } else if (value instanceof Enum) {
            quote(out, ((Enum<?>) value).name());
        } else if (value.getClass().isRecord()) {
            out.append('{');
            boolean first = true;
            for (RecordComponent component : value.getClass().getRecordComponents()) {
                if (!first) out.append(',');
                first = false;
                quote(out, component.getName());
                out.append(':');
                Object item;
                try {
                    component.getAccessor().setAccessible(true);
                    item = component.getAccessor().invoke(value);
                } catch (ReflectiveOperationException | RuntimeException e) {
                    throw new IllegalArgumentException("res.json: cannot read " + component, e);
                }
                write(out, item, depth + 1);
            }
            out.append('}');
        } else {
            quote(out, value.toString());
        }
    }

    private static void number(StringBuilder out, Number n) {
        if (n instanceof Double || n instanceof Float) {
            double d = n.doubleValue();
            out.append(Double.isNaN(d) || Double.isInfinite(d) ? "null" : n.toString());
        } else if (n instanceof Integer || n instanceof Long || n instanceof Short || n instanceof Byte
                || n instanceof BigInteger || n instanceof BigDecimal) {
            out.append(n.toString());
        } else {
            String text = n.toString();
            if (JSON_NUMBER.matcher(text).matches()) {
                out.append(text);
            } else {
                quote(out, text);
            }
        }
    }

    private static void quote(StringBuilder out, String s) {
        out.append('"');
        int n = s.length();
        for (int i = 0; i < n; i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"': out.append("\\\""); break;
                case '\\': out.append("\\\\"); break;
                case '\n': out.append("\\n"); break;
                case '\r': out.append("\\r"); break;
                case '\t': out.append("\\t"); break;
                case '\b': out.append("\\b"); break;
                case '\f': out.append("\\f"); break;
                default:
                    if (c < 0x20) {
                        hex(out, c);
                    } else if (Character.isHighSurrogate(c) && i + 1 < n && Character.isLowSurrogate(s.charAt(i + 1))) {
                        out.append(c).append(s.charAt(++i));
                    } else if (Character.isSurrogate(c)) {
                        hex(out, c); // a lone surrogate: escaped, so the text stays valid UTF-8
                    } else {
                        out.append(c);
                    }
            }
        }
        out.append('"');
    }

    private static void hex(StringBuilder out, char c) {
        out.append("\\u");
        String h = Integer.toHexString(c);
        for (int k = h.length(); k < 4; k++) out.append('0');
        out.append(h);
    }
}
