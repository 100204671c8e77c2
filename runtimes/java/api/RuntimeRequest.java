import java.util.LinkedHashMap;
import java.util.Map;

/**
 * The request of one execution (Appwrite 0.13 / open-runtimes Java contract):
 * the payload as a string, the function's variables (with the
 * APPWRITE_FUNCTION_* ones) and the request headers.
 *
 * This class is compiled into the function's build output together with the
 * function's code (runtimes/java/build.sh), so the function and the worker
 * use one definition of it. It is in the default package, as in Appwrite's
 * Index.java, which uses it without an import.
 *
 * Java cannot change its own process environment: System.getenv() stays the
 * container's; the variables of an execution are in getEnv() only.
 */
public class RuntimeRequest {
    private String payload;
    private Map<String, String> headers;
    private Map<String, String> env;

    public RuntimeRequest() {
        this("", new LinkedHashMap<>(), new LinkedHashMap<>());
    }

    public RuntimeRequest(String payload, Map<String, String> headers, Map<String, String> env) {
        this.payload = payload == null ? "" : payload;
        this.headers = headers == null ? new LinkedHashMap<>() : headers;
        this.env = env == null ? new LinkedHashMap<>() : env;
    }

    /** The request body, "" when there is none. */
    public String getPayload() {
        return payload;
    }

    public void setPayload(String payload) {
        this.payload = payload == null ? "" : payload;
    }

    /** The request headers (lower-case names). */
    public Map<String, String> getHeaders() {
        return headers;
    }

    public void setHeaders(Map<String, String> headers) {
        this.headers = headers == null ? new LinkedHashMap<>() : headers;
    }

    /** The function's variables and the APPWRITE_FUNCTION_* values of this execution. */
    public Map<String, String> getEnv() {
        return env;
    }

    public void setEnv(Map<String, String> env) {
        this.env = env == null ? new LinkedHashMap<>() : env;
    }

    @Override
    public String toString() {
        return "RuntimeRequest(payload=" + payload.length() + " chars, headers=" + headers + ")";
    }
}
