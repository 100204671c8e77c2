# The deps sample: uses the local gem `greeter` that the build installed.
require "greeter"

def main(req, res)
  res.send(Greeter.greet(req.payload))
end
