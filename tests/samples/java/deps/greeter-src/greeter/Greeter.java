package greeter;

/** The sample library of tests/samples/java/deps, shipped as libs/greeter.jar. */
public final class Greeter {
    private Greeter() {
    }

    public static String greet(String name) {
        return "Hello, " + name + "!";
    }
}
