<?php
// PHP offloading with memfis: nginx serves every page it finds in memcached. A miss falls
// through to this script, which renders the page, writes it into the memfis mount at the
// request's path with ordinary file functions, and returns it. The next request for that
// path is served by nginx from memcached without running PHP. Invalidate with `rm`.
//
// Environment (php-fpm pool `env[...]`): MEMFIS_MOUNT, the mount point; MEMFIS_PHP_COUNTER,
// optional file that gets one byte per invocation (the tests count PHP runs with it).

$mount = rtrim(getenv('MEMFIS_MOUNT') ?: '/run/memfis-up/mnt', '/');
$path = $_SERVER['MEMFIS_PATH'] ?? parse_url($_SERVER['REQUEST_URI'] ?? '/', PHP_URL_PATH);

$counter = getenv('MEMFIS_PHP_COUNTER');
if ($counter) {
    file_put_contents($counter, 'x', FILE_APPEND | LOCK_EX);
}

if (!is_string($path) || $path === '' || $path[0] !== '/' || str_contains($path, '/..')) {
    http_response_code(400);
    exit("bad path\n");
}
// Never render over a script or a hidden file: the mount may hold the site's sources.
if (preg_match('~/\.|\.(php[0-9]?|phtml|pht|phar|phps|inc)$~i', $path)) {
    http_response_code(404);
    exit("not found\n");
}
$target = str_ends_with($path, '/') ? $path . 'index.html' : $path;

$title = htmlspecialchars($path, ENT_QUOTES);
$html = "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>$title</title></head>\n"
      . "<body>\n<h1>$title</h1>\n<p>Rendered by PHP at " . gmdate('Y-m-d H:i:s') . " UTC.</p>\n</body>\n</html>\n";

// Publish: memfis stores the whole file in memcached when it is closed.
$file = $mount . $target;
if (!is_dir(dirname($file)) && !mkdir(dirname($file), 0755, true) && !is_dir(dirname($file))) {
    error_log("memfis offload: cannot create " . dirname($file));
} elseif (file_put_contents($file, $html) === false) {
    error_log("memfis offload: cannot write $file");
}

header('Content-Type: text/html; charset=utf-8');
echo $html;
