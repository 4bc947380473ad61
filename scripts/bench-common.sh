# Shared by the bench scripts (sourced, not run): a free loopback port, and the nginx.conf
# every bench's nginx runs with ($work/nginx/nginx.conf, temp paths under $work/nginx).

# make_small_set DIR: the small-file set every bench copies, DIR/small: 2,000 files of 1-16 KB
# (random bytes, the same every run) in 20 directories.
make_small_set() {
  python3 - "$1" <<'PY'
import os, random, sys
root = sys.argv[1]; rnd = random.Random(42)
for d in range(20):
    os.makedirs(f"{root}/small/d{d:02}")
for i in range(2000):
    with open(f"{root}/small/d{i % 20:02}/f{i:04}.html", "wb") as f:
        f.write(rnd.randbytes(rnd.randint(1024, 16384)))
PY
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# write_nginx_conf WORKERS HTTP_BODY: HTTP_BODY goes inside http { } after the common lines
# (pcre_jit on, as memfis up runs nginx).
write_nginx_conf() {
  cat > "$work/nginx/nginx.conf" <<NGX
worker_processes $1;
pcre_jit on;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 1024; }
http {
    include /etc/nginx/mime.types;
    access_log off;
    client_body_temp_path $work/nginx/body; proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fcgi; uwsgi_temp_path $work/nginx/uwsgi; scgi_temp_path $work/nginx/scgi;
$2
}
NGX
}
