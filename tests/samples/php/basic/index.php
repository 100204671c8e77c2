<?php

/*
 * Appwrite 0.13-style PHP function: the file returns the function.
 * $req['payload'] (string), $req['env'] and $req['headers'] (arrays);
 * $res->send($text, $status = 200) or $res->json($data, $status = 200).
 */
return function ($req, $res) {
    $payload = $req['payload'];

    switch ($payload) {
        case 'echo':
            $env = array_filter(
                $req['env'],
                fn ($key) => str_starts_with((string) $key, 'APPWRITE_FUNCTION_') || $key === 'GREETING',
                ARRAY_FILTER_USE_KEY
            );
            // (object): an empty array still goes out as {}
            return $res->json([
                'payload' => $payload,
                'headers' => (object) $req['headers'],
                'env' => (object) $env,
            ]);

        case 'unicode':
            return $res->send('héllo ☃ ' . iconv_strlen($payload, 'UTF-8'));

        case 'print':
            echo "to stdout\n";
            fwrite(STDERR, "to stderr\n");
            return $res->send('printed');

        case 'child':
            // The child inherits this process's stdout and stderr.
            $child = proc_open('echo from a child', [0 => ['file', '/dev/null', 'r'], 1 => STDOUT, 2 => STDERR], $pipes);
            proc_close($child);
            return $res->send('ran');

        case 'status':
            return $res->send('short and stout', 418);

        case 'raise':
            throw new Exception('boom');

        case 'sleep':
            sleep(30);
            return $res->send('late');

        default:
            return $res->send('default:' . $payload);
    }
};
