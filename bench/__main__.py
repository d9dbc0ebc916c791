import sys

USAGE = "usage: python -m bench {run,report,speed,curves,exactness,progressive,perceptual-select,texture-gate} [options]   (each takes -h; `pqmim bench ...` is the same)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("run", "report", "speed", "curves", "exactness", "progressive", "perceptual-select", "texture-gate"):
        print(USAGE, file=sys.stderr)
        return 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "speed":
        from .speed import main as speed

        return speed(rest) or 0
    if cmd == "exactness":
        from .exactness import main as exactness

        return exactness(rest)
    if cmd == "progressive":
        from .progressive import main as progressive

        return progressive(rest)
    if cmd == "perceptual-select":
        from .perceptual_select import main as perceptual_select

        return perceptual_select(rest)
    if cmd == "texture-gate":
        from .texture_gate import main as texture_gate

        return texture_gate(rest)
    if cmd == "curves":
        from .curves import main as curves

        return curves(rest) or 0
    from .suite import main as suite

    return suite(rest, cmd)


if __name__ == "__main__":
    sys.exit(main())
