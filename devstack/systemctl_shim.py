"""``systemctl`` of an emulated instance: hands the command to the boot emulator (the instance's
PID 1) over the control socket on the instance's disk, and prints what it answers.

    python -I systemctl_shim.py SOCKET [systemctl arguments...]

Standard library only: it runs inside the instance, outside the project's packages.
"""

import json
import os
import socket
import sys


def main() -> int:
    sock_path, argv = sys.argv[1], sys.argv[2:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            # Relative to its directory: a full path on a deep disk can exceed sun_path's 108 bytes.
            os.chdir(os.path.dirname(sock_path))
            sock.connect(os.path.basename(sock_path))
        except OSError as exc:
            print(
                f"System has not been booted with systemd as init system (PID 1). Can't operate. ({exc})",
                file=sys.stderr,
            )
            return 1
        sock.sendall(json.dumps({"argv": argv}).encode() + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                print("Failed to get an answer from the service manager.", file=sys.stderr)
                return 1
            answer += chunk
    reply = json.loads(answer)
    sys.stdout.write(reply["stdout"])
    sys.stderr.write(reply["stderr"])
    return int(reply["code"])


if __name__ == "__main__":
    sys.exit(main())
