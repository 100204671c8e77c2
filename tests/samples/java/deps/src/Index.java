import static greeter.Greeter.greet;

/**
 * A function in the class style: a class named after the file with
 * main(RuntimeRequest, RuntimeResponse). greeter.Greeter comes from
 * libs/greeter.jar (built from greeter-src/, see ../sample.toml).
 */
public class Index {
    public RuntimeResponse main(RuntimeRequest req, RuntimeResponse res) {
        return res.send(greet(req.getPayload()));
    }
}
