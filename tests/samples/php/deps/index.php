<?php

use function Greeter\greet;

// vendor/autoload.php (installed by the build) is loaded before this file.
return function ($req, $res) {
    return $res->send(greet($req['payload']));
};
