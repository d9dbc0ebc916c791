import sys

USAGE = "usage: python -m bench {speed,kodak,curves} [options]   (each takes -h)"


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("speed", "kodak", "curves"):
        print(USAGE, file=sys.stderr)
        return 2
    cmd, rest = sys.argv[1], sys.argv[2:]
    if cmd == "speed":
        from .speed import main as run
    elif cmd == "curves":
        from .curves import main as run
    else:
        from .kodak import main as run
    return run(rest) or 0


sys.exit(main())
