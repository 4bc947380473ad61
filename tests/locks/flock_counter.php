<?php
// tests/locks.rs: increments the counter file in this pool's mount under flock(LOCK_EX),
// holding the lock a moment so that requests on the other host's pool overlap, and answers
// the number it wrote. Two requests answering one number means the lock did not exclude.
$path = getenv('MEMFIS_MOUNT') . '/counter';
$f = fopen($path, 'c+');
if ($f === false || !flock($f, LOCK_EX)) {
    http_response_code(500);
    exit("cannot lock $path\n");
}
$n = (int) stream_get_contents($f, -1, 0) + 1;
usleep(1000);
ftruncate($f, 0);
fseek($f, 0);
fwrite($f, "$n\n");
fflush($f);
flock($f, LOCK_UN);
fclose($f);
echo "$n\n";
