<?php
// tests/php_offload.rs: PHP's own file sessions, kept in the shared mount. Each request counts
// in its session and answers the count; session_start() holds the session file's flock until
// the request ends, so requests of one session on two hosts take turns, and two answering one
// number means the lock did not exclude (or one host read a stale session).
session_save_path(getenv('MEMFIS_MOUNT') . '/.sessions');
session_start();
$n = ($_SESSION['n'] ?? 0) + 1;
usleep(1000);
$_SESSION['n'] = $n;
echo "$n\n";
