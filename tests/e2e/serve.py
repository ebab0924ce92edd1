"""Start a ComfyUI server with the pack and a given frontend, print its URL, and keep it up until Ctrl-C/SIGTERM.

    python tests/e2e/serve.py 1.58.1|1.39.14|1.27.10|newest [--comfy 0.14.1]

For working on the browser tests (node tests/e2e/driver.mjs --url <URL> ...) and for scripts/screenshots.sh.
The ComfyUI checkout is found as in e2e_support.comfy_for.
"""
import argparse
import signal
import sys
import time

import e2e_support as s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("frontend")
    ap.add_argument("--comfy", help="ComfyUI version (default: the one the frontend is paired with)")
    args = ap.parse_args()
    pairing = dict(s.PAIRINGS)
    comfy_version = args.comfy or pairing.get(args.frontend) or "0.14.1"
    comfy = s.comfy_for(comfy_version)
    if comfy[0] is None:
        sys.exit(comfy[1])
    version, static = s.frontend_root(args.frontend)
    if version is None:
        sys.exit(static)
    server = s.start_server(comfy, static, s.assets_dir(), test_nodes=s.TEST_NODES)
    print(f"URL {server.url} frontend {version} comfyui {comfy_version} log {server.log_path}", flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    try:
        while not stop and server.proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
