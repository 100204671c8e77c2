from greeter import greet


def main(req, res):
    return res.send(greet(req.payload))
