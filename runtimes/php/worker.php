<?php
/*
 * Functions runtime worker for PHP (PHP 8.1+, core extensions only; pcntl is
 * used when present).
 *
 * Started by the supervisor (runtimes/python/server.py) inside a function
 * container:
 *
 *   python3 /opt/functions-runtime/python/server.py --language php -- \
 *       php /opt/functions-runtime/php/worker.php        (R and W appended)
 *
 * Reads newline-delimited JSON requests from fd R and writes exactly one
 * newline-terminated JSON reply per request to fd W (echoing "id"); nothing
 * else ever goes to W. stdout (echo, print, child processes) and stderr
 * (fwrite(STDERR), error_log(), PHP's warnings) are the pipes the supervisor
 * reads; they are flushed before each reply. Exits when R reaches EOF.
 *
 *   {"type":"ping"}    -> {"ok":true,"version":PHP_VERSION}
 *   {"type":"load","codeDir":"/code","entrypoint":"index.php"}
 *       -> {"ok":true} | {"ok":false,"error":"..."}
 *       chdir(codeDir), requires <codeDir>/vendor/autoload.php (Composer)
 *       when present, then includes the entrypoint, which must return the
 *       function (Appwrite 0.13 / open-runtimes 0.0.x contract):
 *           <?php return function ($req, $res) { ... };
 *   {"type":"execute","payload":"..","env":{..},"headers":{..}}
 *       -> {"statusCode":int,"body":str,"error":str}
 *       Calls fn($req, $res): $req is an array with 'payload' (string), 'env'
 *       and 'headers' (arrays); $res->send(string $text, int $status = 200)
 *       and $res->json($data, int $status = 200) set the response (the last
 *       call counts). getenv()/$_ENV/$_SERVER are overlaid with env for the
 *       call and restored afterwards. An uncaught Throwable gives 500 with
 *       its message and stack trace.
 *
 * exit()/die() or a fatal error (which PHP cannot catch) in the user's code
 * still gets its reply (from a shutdown function: the response set before
 * exit(), else 500 with the reason); then this worker re-executes itself
 * (pcntl_exec, same fds), reloads the code and goes on with the next request.
 * Without pcntl the process ends and the supervisor discards the container.
 */

namespace FunctionsRuntime;

use Throwable;

// PHP's own diagnostics go to stderr (the execution's errors), never into
// stdout; log_errors off so that they are not written twice. error_log()
// still writes to stderr (the CLI's default log).
\ini_set('display_errors', 'stderr');
\ini_set('log_errors', '0');
\ini_set('html_errors', '0');

const JSON_OUT = \JSON_UNESCAPED_UNICODE | \JSON_UNESCAPED_SLASHES | \JSON_INVALID_UTF8_SUBSTITUTE;
const FATAL = \E_ERROR | \E_PARSE | \E_CORE_ERROR | \E_COMPILE_ERROR | \E_USER_ERROR | \E_RECOVERABLE_ERROR;

/** The $res of the Appwrite 0.13 contract. */
final class Response
{
    /** @var array{0:int,1:string}|null the last send()/json() */
    private ?array $response = null;

    public function send($text = '', $status = 200): self
    {
        $this->response = [status($status), text($text)];
        return $this;
    }

    public function json($data, $status = 200): self
    {
        $status = status($status);
        $body = \json_encode($data, \JSON_UNESCAPED_UNICODE | \JSON_UNESCAPED_SLASHES
            | \JSON_INVALID_UTF8_SUBSTITUTE | \JSON_THROW_ON_ERROR);
        $this->response = [$status, $body];
        return $this;
    }

    public function __debugInfo(): array
    {
        return [];
    }
}

/** [status, body] of the last $res->send()/json(), or null. */
function response_of(Response $res): ?array
{
    return (fn () => $this->response)->call($res);
}

function status($status): int
{
    if (\is_int($status)) {
        return $status;
    }
    if (\is_string($status) && \preg_match('/^\s*[0-9]{1,9}\s*$/', $status)) {
        return (int) $status;
    }
    if (\is_float($status) && \floor($status) === $status && \abs($status) < 1e9) {
        return (int) $status;
    }
    throw new \TypeError('invalid status code: ' . \var_export($status, true));
}

function text($text): string
{
    if (\is_string($text)) {
        return $text;
    }
    if ($text === null) {
        return '';
    }
    if (\is_scalar($text) || $text instanceof \Stringable) {
        return (string) $text;
    }
    return (string) \json_encode($text, JSON_OUT | \JSON_PARTIAL_OUTPUT_ON_ERROR);
}

function type_name($value): string
{
    return \is_object($value) ? \get_class($value) : \get_debug_type($value);
}

/** A Throwable as PHP prints it, without this worker's frames. */
function format_throwable(Throwable $e): string
{
    $chain = [];
    for ($seen = []; $e !== null && !isset($seen[\spl_object_id($e)]); $e = $e->getPrevious()) {
        $seen[\spl_object_id($e)] = true;
        $chain[] = $e;
    }
    $parts = [];
    foreach (\array_reverse($chain) as $e) {
        $trace = $e->getTrace();
        [$file, $line] = [$e->getFile(), $e->getLine()];
        if ($file === __FILE__) { // thrown by $res->send() and the like: point at the caller
            foreach ($trace as $frame) {
                if (isset($frame['file']) && $frame['file'] !== __FILE__) {
                    [$file, $line] = [$frame['file'], $frame['line'] ?? 0];
                    break;
                }
            }
        }
        $lines = [\get_class($e) . ': ' . $e->getMessage() . ' in ' . $file . ':' . $line, 'Stack trace:'];
        $n = 0;
        foreach ($trace as $frame) {
            if (($frame['file'] ?? null) === __FILE__) {
                continue;
            }
            $where = isset($frame['file']) ? $frame['file'] . '(' . ($frame['line'] ?? 0) . ')' : '[internal function]';
            $call = ($frame['class'] ?? '') . ($frame['type'] ?? '') . ($frame['function'] ?? '');
            $lines[] = '#' . $n++ . ' ' . $where . ': ' . $call . '()';
        }
        $lines[] = '#' . $n . ' {main}';
        $parts[] = \implode("\n", $lines);
    }
    return \implode("\n\nNext ", $parts);
}

/** "a/./b/../c" -> "a/c"; null when it leaves its root. */
function normalize(string $path): ?string
{
    $out = [];
    foreach (\explode('/', $path) as $part) {
        if ($part === '' || $part === '.') {
            continue;
        }
        if ($part === '..') {
            if (!$out) {
                return null;
            }
            \array_pop($out);
            continue;
        }
        $out[] = $part;
    }
    return \implode('/', $out);
}

/** Includes a file in a scope of its own (its top-level variables stay there). */
function isolated_include(string $__file)
{
    return (static function () {
        return include \func_get_arg(0);
    })($__file);
}

function flush_output(): void
{
    while (\ob_get_level() > 0) {
        if (!@\ob_end_flush()) {
            break;
        }
    }
    \flush();
    @\fflush(\STDOUT);
    @\fflush(\STDERR);
}

final class Worker
{
    private $in;
    private $out;
    private int $pid;
    /** @var callable|null */
    private $fn = null;
    private ?array $loaded = null; // what was loaded, to reload after exit()
    private string $notLoaded = 'no code loaded';
    private int $responseMax = 1048576;
    /** @var array|null the request being handled: [id, type] */
    private ?array $inflight = null;
    private ?Response $res = null;
    /** @var array<string, array{0:string|false,1:bool,2:mixed,3:bool,4:mixed}> */
    private array $savedEnv = [];

    public function __construct(private int $r, private int $w, ?array $resume)
    {
        $this->pid = \getmypid();
        $this->in = \fopen('php://fd/' . $r, 'rb');
        $this->out = \fopen('php://fd/' . $w, 'wb');
        if (!$this->in || !$this->out) {
            \fwrite(\STDERR, "functions-runtime php worker: cannot open fds $r and $w\n");
            exit(1);
        }
        \register_shutdown_function([$this, 'onShutdown']);
        if ($resume !== null) {
            $this->resume($resume);
        }
    }

    public function run(): void
    {
        while (true) {
            $line = \fgets($this->in);
            if ($line === false || \substr($line, -1) !== "\n") {
                exit(0); // the supervisor went away
            }
            if (\trim($line) === '') {
                continue; // not a request
            }
            $msg = null;
            try {
                $msg = \json_decode($line, true, 4096, \JSON_INVALID_UTF8_SUBSTITUTE | \JSON_THROW_ON_ERROR);
                $this->inflight = [\is_array($msg) ? ($msg['id'] ?? null) : null, \is_array($msg) ? ($msg['type'] ?? null) : null];
                $reply = \is_array($msg) ? $this->handle($msg) : ['ok' => false, 'error' => 'invalid request: not a JSON object'];
            } catch (\JsonException $e) {
                $reply = ['ok' => false, 'error' => 'invalid JSON: ' . $e->getMessage()];
            } catch (Throwable $e) { // a bug here: say so, the supervisor decides
                $reply = ['ok' => false, 'error' => 'runtime error: ' . format_throwable($e)];
            }
            if (\getmypid() !== $this->pid) {
                exit(0); // a child the user's code forked, back in this loop: never answer
            }
            $this->reply($reply);
        }
    }

    private function handle(array $msg): array
    {
        $type = $msg['type'] ?? null;
        switch ($type) {
            case 'execute':
                return $this->execute($msg);
            case 'load':
                return $this->load($msg);
            case 'ping':
                return ['ok' => true, 'version' => \PHP_VERSION];
        }
        return ['ok' => false, 'error' => 'unknown message type: ' . \json_encode($type, JSON_OUT)];
    }

    private function reply(array $reply): void
    {
        flush_output();
        $reply['id'] = $this->inflight[0] ?? null;
        $this->inflight = null;
        $this->res = null;
        $data = \json_encode($reply, JSON_OUT | \JSON_PARTIAL_OUTPUT_ON_ERROR);
        if ($data === false) {
            $data = \json_encode(['id' => $reply['id'], 'ok' => false, 'statusCode' => 500, 'body' => '',
                'error' => 'runtime error: cannot encode the reply: ' . \json_last_error_msg()], JSON_OUT);
        }
        $data .= "\n";
        for ($off = 0, $len = \strlen($data); $off < $len; $off += $n) {
            $n = @\fwrite($this->out, $off ? \substr($data, $off) : $data);
            if ($n === false || $n === 0) {
                exit(1); // the supervisor cannot be answered
            }
        }
        \fflush($this->out);
    }

    // -- load ---------------------------------------------------------------

    private function load(array $msg): array
    {
        if ($this->fn !== null) {
            return ['ok' => false, 'error' => 'code already loaded'];
        }
        $limit = $msg['responseMaxBytes'] ?? null;
        if (\is_int($limit) && $limit >= 0) {
            $this->responseMax = $limit;
        }
        $codeDir = (string) ($msg['codeDir'] ?? '');
        $codeDir = $codeDir === '' ? '/code' : $codeDir;
        $entry = (string) ($msg['entrypoint'] ?? '');
        $entry = $entry === '' ? 'index.php' : $entry;
        if (\str_contains($codeDir, "\0") || \str_contains($entry, "\0")) {
            return ['ok' => false, 'error' => 'invalid code directory or entrypoint (NUL byte)'];
        }
        if ($codeDir[0] !== '/') {
            $codeDir = \getcwd() . '/' . $codeDir;
        }
        $codeDir = '/' . normalize($codeDir);
        $rel = $entry[0] === '/' ? null : normalize($entry);
        if ($rel === null || $rel === '') {
            return ['ok' => false, 'error' => "entrypoint must be inside the code directory: $entry"];
        }
        $path = \rtrim($codeDir, '/') . '/' . $rel;
        if (!\is_file($path)) {
            return ['ok' => false, 'error' => "entrypoint not found: $path"];
        }
        if (!\is_readable($path)) {
            return ['ok' => false, 'error' => "entrypoint is not readable: $path"];
        }
        @\chdir($codeDir);
        $this->loaded = ['codeDir' => $codeDir, 'entrypoint' => $rel, 'responseMaxBytes' => $this->responseMax];
        try {
            $autoload = $this->autoloader($codeDir);
            if ($autoload !== null) {
                isolated_include($autoload);
            }
            $fn = isolated_include($path);
        } catch (Throwable $e) {
            $this->loaded = null;
            return ['ok' => false, 'error' => "failed to load $rel:\n" . format_throwable($e)];
        }
        if (!\is_callable($fn)) {
            $this->loaded = null;
            return ['ok' => false, 'error' => "$rel must return a function: <?php return function (\$req, \$res) { ... }; "
                . '(it returned ' . type_name($fn) . ')'];
        }
        $this->fn = $fn;
        return ['ok' => true];
    }

    /** Composer's vendor/autoload.php (or the composer.json's vendor-dir), if installed. */
    private function autoloader(string $codeDir): ?string
    {
        $vendor = 'vendor';
        $manifest = $codeDir . '/composer.json';
        if (\is_file($manifest)) {
            $json = \json_decode((string) @\file_get_contents($manifest), true);
            $dir = \is_array($json) ? ($json['config']['vendor-dir'] ?? null) : null;
            if (\is_string($dir) && $dir !== '' && $dir[0] !== '/' && normalize($dir)) {
                $vendor = normalize($dir);
            }
        }
        $file = $codeDir . '/' . $vendor . '/autoload.php';
        return \is_file($file) ? $file : null;
    }

    /** After exit() re-executed this worker: load the same code again, quietly. */
    private function resume(array $state): void
    {
        $this->inflight = [null, 'resume'];
        \ob_start();
        try {
            $out = $this->load($state);
        } catch (Throwable $e) {
            $out = ['ok' => false, 'error' => format_throwable($e)];
        }
        \ob_end_clean();
        $this->inflight = null;
        if (empty($out['ok'])) {
            $this->notLoaded = 'no code loaded: reloading the code after exit() failed: ' . ($out['error'] ?? '?');
        }
    }

    // -- execute ------------------------------------------------------------

    private function execute(array $msg): array
    {
        if ($this->fn === null) {
            return ['statusCode' => 500, 'body' => '', 'error' => $this->notLoaded];
        }
        $payload = $msg['payload'] ?? '';
        if (!\is_string($payload)) {
            $payload = $payload === null ? '' : (string) \json_encode($payload, JSON_OUT);
        }
        $env = \is_array($msg['env'] ?? null) ? $msg['env'] : [];
        $headers = \is_array($msg['headers'] ?? null) ? $msg['headers'] : [];
        $this->overlayEnv($env);
        $this->res = $res = new Response();
        $status = 500;
        $body = '';
        $error = '';
        try {
            $result = ($this->fn)(['payload' => $payload, 'env' => $env, 'headers' => $headers], $res);
            $last = response_of($res);
            if (\is_string($result)) {
                [$status, $body] = [200, $result];
            } elseif (\is_array($result)) {
                [$status, $body] = response_of((new Response())->json($result));
            } elseif ($last !== null) {
                [$status, $body] = $last;
            } elseif ($result === null || $result instanceof Response) {
                $error = 'Function returned no response: call $res->send(...) or $res->json(...)';
            } else {
                $error = 'Function returned ' . type_name($result) . '; call $res->send(...) or $res->json(...)';
            }
        } catch (Throwable $e) {
            [$status, $body, $error] = [500, '', format_throwable($e)];
        } finally {
            $this->restoreEnv();
        }
        if ($error !== '') {
            [$status, $body] = [500, ''];
        }
        return ['statusCode' => $status, 'body' => $body, 'error' => $error];
    }

    private function overlayEnv(array $env): void
    {
        $this->savedEnv = [];
        foreach ($env as $key => $value) {
            $key = (string) $key;
            $value = \is_string($value) ? $value : (string) \json_encode($value, JSON_OUT);
            if ($key === '' || \strpbrk($key, "=\0") !== false || \str_contains($value, "\0")) {
                continue; // not a variable name the environment can hold
            }
            if (!isset($this->savedEnv[$key])) {
                $this->savedEnv[$key] = [\getenv($key, true), \array_key_exists($key, $_ENV), $_ENV[$key] ?? null,
                    \array_key_exists($key, $_SERVER), $_SERVER[$key] ?? null];
            }
            try {
                \putenv("$key=$value");
            } catch (Throwable) {
                continue;
            }
            $_ENV[$key] = $value;
            $_SERVER[$key] = $value;
        }
    }

    private function restoreEnv(): void
    {
        foreach ($this->savedEnv as $key => [$old, $inEnv, $envValue, $inServer, $serverValue]) {
            try {
                \putenv($old === false ? $key : "$key=$old");
            } catch (Throwable) {
            }
            if ($inEnv) {
                $_ENV[$key] = $envValue;
            } else {
                unset($_ENV[$key]);
            }
            if ($inServer) {
                $_SERVER[$key] = $serverValue;
            } else {
                unset($_SERVER[$key]);
            }
        }
        $this->savedEnv = [];
    }

    // -- exit() and fatal errors ----------------------------------------------

    public function onShutdown(): void
    {
        if (\getmypid() !== $this->pid || $this->inflight === null) {
            return; // a forked child exiting, or the end of R
        }
        @\ini_set('memory_limit', '-1'); // after "Allowed memory size exhausted"
        [$id, $type] = $this->inflight;
        $this->restoreEnv();
        $last = \error_get_last();
        $fatal = $last !== null && ($last['type'] & FATAL)
            ? 'PHP Fatal error: ' . $last['message'] . ' in ' . $last['file'] . ':' . $last['line']
            : null;
        $reason = $fatal ?? 'the code called exit()';
        $restart = \function_exists('pcntl_exec');
        $then = $restart ? 'the runtime restarts' : 'the runtime exits';
        if ($type === 'resume') {
            return; // reloading after exit(): nobody is waiting; the process ends
        } elseif ($type === 'execute') {
            $sent = $this->res === null ? null : response_of($this->res);
            $reply = $fatal === null && $sent !== null
                ? ['statusCode' => $sent[0], 'body' => $sent[1], 'error' => '']
                : ['statusCode' => 500, 'body' => '', 'error' => "Execution failed: $reason; $then."];
        } elseif ($type === 'load') {
            $entry = $this->loaded['entrypoint'] ?? '?';
            $this->loaded = null;
            $reply = ['ok' => false, 'error' => "failed to load $entry:\n$reason"];
        } else {
            $reply = ['ok' => false, 'error' => "runtime error: $reason"];
        }
        $this->reply($reply);
        if (!$restart) {
            return;
        }
        $args = [__FILE__];
        if ($this->fn !== null && $this->loaded !== null) {
            $args[] = '--resume=' . \json_encode($this->loaded, JSON_OUT);
        }
        $args[] = (string) $this->r;
        $args[] = (string) $this->w;
        @\fclose($this->in); // their dups; fds R and W stay open across exec
        @\fclose($this->out);
        @\pcntl_exec(\PHP_BINARY, $args);
        \fwrite(\STDERR, "functions-runtime php worker: cannot restart: "
            . (\function_exists('pcntl_get_last_error') ? \pcntl_strerror(\pcntl_get_last_error()) : '?') . "\n");
    }
}

function main(array $argv): void
{
    $n = \count($argv);
    if ($n < 3 || !\ctype_digit($argv[$n - 2]) || !\ctype_digit($argv[$n - 1])) {
        \fwrite(\STDERR, "usage: php worker.php [--resume=STATE] REQUEST_FD REPLY_FD\n");
        exit(2);
    }
    $resume = null;
    foreach (\array_slice($argv, 1, $n - 3) as $arg) {
        if (\str_starts_with($arg, '--resume=')) {
            $state = \json_decode(\substr($arg, 9), true);
            $resume = \is_array($state) ? $state : null;
        }
    }
    (new Worker((int) $argv[$n - 2], (int) $argv[$n - 1], $resume))->run();
}

main($_SERVER['argv'] ?? []);
