"""A Milvus standalone server on this machine, reachable on 127.0.0.1 only (lab, tests, bench).

The `milvus` wheel carries a real Milvus standalone binary (embedded etcd, local storage, RocksMQ),
but it listens on every interface and locks /run/milvus/standalone.pid.  Here it runs in private
namespaces (`unshare -rnmpf`: user, network, mount and PID): its only network device is its own
loopback, so nothing beyond this machine can reach it; /run is its own tmpfs, so servers run side
by side; it dies with the process that started it.  A relay in the caller's namespace listens on
127.0.0.1 and passes each connection in through a Unix socket.  Killing the server (`kill`) and
starting it again on the same data directory is a real restart: the relay keeps its port,
clients see their connections drop.

    python -m boq_ros.keyframe_map.milvus_local ~/milvus-data --port 19530
"""
import argparse
import contextlib
import ctypes
import fcntl
import os
from pathlib import Path
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

READY = 'boq_ros-milvus-ready'
START_TIMEOUT_S = 180.0
BUFFER = 1 << 20
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
PR_SET_PDEATHSIG = 1
NAMESPACES = ['unshare', '-rnmpf', '--kill-child']
MODULE = 'boq_ros.keyframe_map.milvus_local'


def available() -> str:
    """'' when a local server can run here, else the reason (a test's skip message)."""
    try:
        import milvus  # noqa: F401, PLC0415 - the wheel with the server binary
    except ImportError:
        return 'the milvus package (server binary) is not installed: pip install milvus==2.3.5'
    if sys.platform != 'linux':
        return f'a private network namespace needs Linux, this is {sys.platform}'
    try:
        probe = subprocess.run([*NAMESPACES, 'true'], capture_output=True, text=True,
                               check=False)
    except FileNotFoundError:
        return 'unshare (util-linux) is not installed'
    if probe.returncode:
        return (f'{" ".join(NAMESPACES)} (user, network, mount and PID namespaces) is not '
                f'permitted here: {probe.stderr.strip()}')
    return ''


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(BUFFER):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _relay(listener: socket.socket, connect: 'callable', stop: threading.Event) -> None:
    """Accept on `listener`; join each connection to a new one from `connect()` (both ways)."""
    while not stop.is_set():
        try:
            client, _ = listener.accept()
        except OSError:
            return
        try:
            upstream = connect()
        except OSError:
            client.close()  # the server is down (restarting): the client sees a reset
            continue
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pump, args=(a, b), daemon=True).start()


class LocalMilvus:
    """Start, kill and restart a Milvus standalone on `data_dir`, served on 127.0.0.1:`port`."""

    def __init__(self, data_dir: str | os.PathLike, port: int = 0,
                 start_timeout_s: float = START_TIMEOUT_S) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.socket_path = self.data_dir / 'relay.sock'
        self.start_timeout_s = start_timeout_s
        self._listener = socket.create_server(('127.0.0.1', port))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._proc: subprocess.Popen | None = None
        threading.Thread(target=_relay, args=(self._listener, self._connect, self._stop),
                         daemon=True).start()

    @property
    def uri(self) -> str:
        return f'milvus://127.0.0.1:{self.port}'

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.socket_path))
        except OSError:
            sock.close()
            raise
        return sock

    def start(self) -> None:
        """Start the server and wait until it answers (raises with its log tail if it dies)."""
        reason = available()
        if reason:
            raise RuntimeError(f'cannot start a local Milvus: {reason}')
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        log = open(self.data_dir / 'supervisor.log', 'ab')  # noqa: SIM115 - the child holds it
        self._proc = subprocess.Popen(
            [*NAMESPACES, sys.executable, '-m', MODULE, '--inside', str(self.data_dir)],
            stdout=subprocess.PIPE, stderr=log, start_new_session=True, text=True,
            preexec_fn=_die_with_parent, env=_offline_env())
        log.close()
        deadline = time.monotonic() + self.start_timeout_s
        ready = threading.Event()

        def watch(out: 'subprocess.IO[str]') -> None:
            for line in out:
                if line.strip() == READY:
                    ready.set()

        threading.Thread(target=watch, args=(self._proc.stdout,), daemon=True).start()
        while not ready.wait(0.2):
            exited = self._proc.poll() is not None
            if exited or time.monotonic() > deadline:
                self.kill()
                tail = (self.data_dir / 'supervisor.log').read_text(errors='replace')[-2000:]
                what = 'exited' if exited else f'did not start within {self.start_timeout_s:.0f} s'
                raise RuntimeError(f'local Milvus on {self.data_dir} {what}:\n{tail}')

    def kill(self) -> None:
        """SIGKILL the server and everything in its namespace (no clean shutdown)."""
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
            self._proc = None
        self.socket_path.unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop the server cleanly (SIGTERM, then SIGKILL after 20 s)."""
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def close(self) -> None:
        """Stop the server and the relay."""
        self.stop()
        self._stop.set()
        self._listener.close()

    def __enter__(self) -> 'LocalMilvus':
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _die_with_parent() -> None:
    """SIGKILL the namespaces' `unshare` when its starter dies (it then kills the server)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _offline_env() -> dict[str, str]:
    """Return the environment minus proxies (the server's health check is local HTTP)."""
    return {k: v for k, v in os.environ.items() if 'proxy' not in k.lower()}


def _private_run() -> None:
    """Mount a tmpfs on /run in this mount namespace (the server's pid file lives there)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b'tmpfs', b'/run', b'tmpfs', 0, b'mode=0755') != 0:
        raise OSError(ctypes.get_errno(), 'cannot mount a private /run')


def _loopback_up() -> None:
    """Bring up `lo` in a fresh network namespace (down by default), without iproute2."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack('16sH14x', b'lo', 0)
        flags = struct.unpack('16sH14x', fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack('16sH14x', b'lo', flags | IFF_UP))


def _inside(data_dir: Path) -> None:
    """Run in the private namespace: the server, then the Unix-socket end of the relay."""
    from milvus import MilvusServer  # noqa: PLC0415

    _private_run()
    _loopback_up()
    server = MilvusServer()
    server.set_base_dir(str(data_dir / 'server'))
    server.start()  # waits for its health check
    stop = threading.Event()

    def shutdown(*_: object) -> None:
        stop.set()
        server.stop()
        sys.exit(0)

    signal.signal(signal.SIGTERM, shutdown)
    path = data_dir / 'relay.sock'
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(64)
    port = server.listen_port
    threading.Thread(target=_relay, args=(
        listener, lambda: socket.create_connection(('127.0.0.1', port)), stop),
        daemon=True).start()
    print(READY, flush=True)
    while server.server_proc is not None and server.server_proc.poll() is None:
        time.sleep(0.5)
    sys.exit('the Milvus server process exited')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f'python -m {MODULE}',
        description='Run a Milvus standalone server on this machine, reachable on 127.0.0.1 '
                    'only (it runs in a private network namespace). Ctrl+C stops it.')
    parser.add_argument('data_dir', help='directory of the server data (created if missing)')
    parser.add_argument('--port', type=int, default=19530,
                        help='port on 127.0.0.1 (default 19530; 0 picks a free one)')
    parser.add_argument('--inside', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inside:
        _inside(Path(args.data_dir))
        return 0
    try:
        server = LocalMilvus(args.data_dir, args.port)
    except OSError as err:
        print(f'error: cannot listen on 127.0.0.1:{args.port}: {err}', file=sys.stderr)
        return 1
    try:
        server.start()
    except RuntimeError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    print(f'Milvus standalone on {server.uri} (data in {server.data_dir}); Ctrl+C stops it',
          flush=True)
    try:
        while server._proc is not None and server._proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
