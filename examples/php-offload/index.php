<?php
// PHP offloading with memfis, as a small application. nginx serves every page it finds in
// memcached; a miss of any URL falls through to this script, which renders the page, writes it
// into the memfis mount and returns it. The next request is served by nginx from memcached
// without PHP. Invalidate a page with `rm` in the mount.
//
// Every miss reaches this script, including a crawler's or an attacker's random URLs, so:
// - only the routes below render; any other path is a 404 that touches nothing in the mount
//   (a page stored per requested URL would fill memcached until every write fails);
// - the names written come from the route table, never from the request, and pages are bounded;
// - several hosts missing one page at once render it once: a flock on a lock file in the shared
//   mount (memfis locks hold across mounts), then a second look before rendering, helped by a
//   token in the lock file (publish());
// - a page appears whole or not at all: written under a hidden temporary name (nginx refuses
//   hidden paths), then renamed over its name;
// - nothing someone planted in the mount is read out or written through: no symlink at a page,
//   a lock file or any directory on their way, no hard link (a page or lock file with a second
//   name), and a page is returned only if others may read it (as nginx would serve it). A
//   writer inside the mount who swaps names between these checks and the open can still win a
//   race (PHP has no openat); set php-fpm's request_terminate_timeout so that a FIFO swapped in
//   cannot hold a worker for good.
//
// Environment (php-fpm pool `env[...]`): MEMFIS_MOUNT, the mount point. For the tests:
// MEMFIS_PHP_COUNTER, a file that gets one byte per invocation; MEMFIS_RENDER_LOG, one line
// per render; MEMFIS_RENDER_DELAY_MS, a pause in each render so that concurrent misses overlap.

declare(strict_types=1);

// Below memcached's item size (-I), or nginx could not serve the page anyway.
const MAX_PAGE_BYTES = 256 * 1024;

$mount = rtrim(getenv('MEMFIS_MOUNT') ?: '/run/memfis-up/mnt', '/');
$mount = realpath($mount) ?: $mount; // (paths below are checked to be real: see real_dir())
$path = $_SERVER['MEMFIS_PATH'] ?? parse_url($_SERVER['REQUEST_URI'] ?? '/', PHP_URL_PATH);
$articles = require __DIR__ . '/articles.php';

if ($counter = getenv('MEMFIS_PHP_COUNTER')) {
    file_put_contents($counter, 'x', FILE_APPEND | LOCK_EX);
}

$route = is_string($path) ? route($path, $articles) : null;
if ($route === null) {
    http_response_code(404);
    header('Content-Type: text/plain; charset=utf-8');
    exit("not found\n");
}
[$name, $render] = $route;
$page = publish($mount, $name, $render);
header('Content-Type: text/html; charset=utf-8');
echo $page;

/** The file a path is stored at and how to render it, or null for a path that is no page. */
function route(string $path, array $articles): ?array
{
    $home = fn() => layout('memfis', '<ul>' . implode('', array_map(
        fn($slug, $a) => '<li><a href="/articles/' . $slug . '.html">' . e($a['title']) . '</a></li>',
        array_keys($articles),
        $articles
    )) . '</ul>');
    $pages = [
        '/' => ['index.html', $home],
        '/index.html' => ['index.html', $home],
        '/about.html' => ['about.html', fn() => layout('About', '<p>Rendered once by PHP, then served by nginx from memcached.</p>')],
    ];
    if (isset($pages[$path])) {
        return $pages[$path];
    }
    // \z, not $: `$` would also match before a trailing newline (%0A in the URL).
    if (preg_match('~\A/articles/([a-z0-9-]{1,64})\.html\z~', $path, $m) && isset($articles[$m[1]])) {
        $a = $articles[$m[1]];
        $body = implode("\n", array_map(fn($p) => '<p>' . e($p) . '</p>', $a['body']));
        return ["articles/$m[1].html", fn() => layout($a['title'], $body)];
    }
    return null;
}

function e(string $s): string
{
    return htmlspecialchars($s, ENT_QUOTES | ENT_SUBSTITUTE, 'UTF-8');
}

function layout(string $title, string $body): string
{
    return "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>" . e($title)
        . "</title></head>\n<body>\n<h1>" . e($title) . "</h1>\n$body\n<p>Rendered by PHP at "
        . gmdate('Y-m-d H:i:s') . " UTC.</p>\n</body>\n</html>\n";
}

/** Renders `$name` unless another request (on any host) stored it meanwhile; its bytes. */
function publish(string $mount, string $name, callable $render): string
{
    $lock = open_lock($mount, $name);
    if ($lock === null) {
        // Answer the request, but store nothing without the lock.
        return render($name, $render);
    }
    // The lock file holds a token that whoever stores the page changes. A mount may not see for
    // up to a second a name another mount just made (it answers lookups from a directory listing
    // it read within attr_ttl), but a lock shows what its last holder wrote: a token that changed
    // while this request waited says the page is stored, even where it is not visible yet.
    $before = stream_get_contents($lock, -1, 0);
    if (!flock($lock, LOCK_EX)) {
        fclose($lock);
        error_log("memfis offload: cannot lock $name");
        return render($name, $render);
    }
    try {
        // Stored meanwhile: the token changed while this request waited, or it was written
        // within the last 2 s (the previous holder may have stored the page just before this
        // request read the token: this mount may not see the name for a second yet).
        $now = stream_get_contents($lock, -1, 0);
        $written = (float) (explode(' ', (string) $now, 2)[1] ?? 0);
        // (Hosts' clocks may differ a little: within 2 s either way counts as recent.)
        $stored = $now !== $before || abs(microtime(true) - $written) < 2.0;
        $page = read_page("$mount/$name", $stored ? 15 : 1);
        if ($page !== null) {
            return $page;
        }
        $page = render($name, $render);
        if (strlen($page) > MAX_PAGE_BYTES) {
            error_log("memfis offload: $name is " . strlen($page) . " bytes, not stored");
        } elseif (store("$mount/$name", $page)) {
            ftruncate($lock, 0);
            rewind($lock);
            fwrite($lock, bin2hex(random_bytes(8)) . ' ' . microtime(true));
            fflush($lock);
        }
        return $page;
    } finally {
        flock($lock, LOCK_UN); // publishes the token
        fclose($lock);
    }
}

/** The page's bytes, looking `$tries` times 100 ms apart; null if it is not there. */
function read_page(string $file, int $tries): ?string
{
    for ($try = 0; $try < $tries; $try++) {
        if ($try > 0) {
            usleep(100_000);
        }
        $f = open_regular($file, 'r');
        if ($f !== null) {
            // Only a page nginx would serve: one name (a hard link someone made there to
            // a private file must not be read out) and readable by others.
            $st = fstat($f);
            $page = $st['nlink'] === 1 && ($st['mode'] & 0004) ? stream_get_contents($f) : false;
            fclose($f);
            if ($page !== false) {
                return $page;
            }
        }
    }
    return null;
}

function render(string $name, callable $render): string
{
    if ($log = getenv('MEMFIS_RENDER_LOG')) {
        file_put_contents($log, "$name\n", FILE_APPEND | LOCK_EX);
    }
    usleep(1000 * (int) getenv('MEMFIS_RENDER_DELAY_MS'));
    return $render();
}

/**
 * The page's lock file in the mount, opened, or null. Lock files are kept (one per page the route
 * table knows): a removed one could be locked by one request and re-created and locked by another.
 */
function open_lock(string $mount, string $name)
{
    $dir = "$mount/.locks";
    if (!make_dir($dir, 0700)) {
        return null;
    }
    $f = open_regular("$dir/" . sha1($name) . '.lock', 'c+');
    if ($f !== null && fstat($f)['nlink'] !== 1) {
        // A hard link someone made there: its token would be written into another file.
        fclose($f);
        $f = null;
    }
    if ($f === null) {
        error_log("memfis offload: cannot open the lock of $name");
        return null;
    }
    // Every read goes to the file: a buffered one could answer from before the lock.
    stream_set_read_buffer($f, 0);
    return $f;
}

/**
 * `$path` opened with `$mode`, or null unless it is a regular file reached through no symlink:
 * PHP may run as a user that can write anywhere, and a link someone made in the mount (at a
 * page's name, or a lock file's) must not be read out or written through.
 */
function open_regular(string $path, string $mode)
{
    if (!real_dir(dirname($path))) {
        return null;
    }
    clearstatcache(true, $path);
    $before = @lstat($path);
    if ($before !== false && ($before['mode'] & 0170000) !== 0100000) {
        return null;
    }
    $f = @fopen($path, $mode);
    if ($f === false) {
        return null;
    }
    // The name may have changed between the lstat and the open: the file opened must be the
    // one the name holds now, not what a link there points at.
    clearstatcache(true, $path);
    $opened = fstat($f);
    $now = @lstat($path);
    if ($now === false || $opened['dev'] !== $now['dev'] || $opened['ino'] !== $now['ino']) {
        fclose($f);
        return null;
    }
    return $f;
}

/** Writes `$page` at `$file` whole: a temporary file, published by fsync, renamed over it. */
function store(string $file, string $page): bool
{
    $dir = dirname($file);
    if (!make_dir($dir, 0755)) {
        return false;
    }
    $tmp = "$dir/." . basename($file) . '.' . bin2hex(random_bytes(6)) . '.tmp';
    $f = @fopen($tmp, 'x'); // O_EXCL: never through an existing name or link
    if ($f === false) {
        error_log("memfis offload: cannot create $tmp");
        return false;
    }
    // Others must be able to read it, or nginx never serves it (a pool's umask may be 027).
    $ok = chmod($tmp, 0644) && fwrite($f, $page) === strlen($page) && fsync($f);
    fclose($f);
    if (!$ok || !rename($tmp, $file)) {
        @unlink($tmp);
        error_log("memfis offload: cannot store $file");
        return false;
    }
    return true;
}

/**
 * Whether `$dir` is itself, not reached through a symlink anywhere on its way (a linked
 * parent would take reads and writes out of the page's directory, or out of the mount).
 */
function real_dir(string $dir): bool
{
    // `true`: the realpath cache too (a worker keeps it up to 120 s: a directory swapped for
    // a link since would still resolve as it was).
    clearstatcache(true);
    return realpath($dir) === $dir;
}

/** True once `$dir` is a directory, made if need be; never a symlink. */
function make_dir(string $dir, int $mode): bool
{
    // A directory another host made a moment ago may not be visible here yet: a mount answers
    // lookups from a listing it read within the last second (attr_ttl), so mkdir says EEXIST
    // while is_dir says no. Wait that out.
    for ($try = 0; $try < 15; $try++) {
        clearstatcache(true, $dir);
        if (is_dir($dir) || @mkdir($dir, $mode)) {
            // PHP runs as a user that can write the mount: never follow a link out of it.
            if (!real_dir($dir)) {
                break;
            }
            return true;
        }
        usleep(100_000);
    }
    error_log("memfis offload: cannot make directory $dir");
    return false;
}
