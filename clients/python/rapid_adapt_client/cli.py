"""`rapid-adapt`: the Rapid Adapt API from the shell.

Exit codes: 0 done; 1 the API refused the request (its error is printed, with the field);
2 bad usage or unreadable local files; 3 the adaptation ended failed or cancelled;
4 the service could not be reached or was unavailable; 5 --wait ran out of time."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .client import DONE, Client
from .errors import RapidAdaptError
from .inputs import expand, read_inputs, read_support

EXAMPLES = """examples:
  export RAPID_ADAPT_URL=http://127.0.0.1:8000 RAPID_ADAPT_API_KEY=demo-key
  rapid-adapt status                                              # is it up, and is my key accepted?
  rapid-adapt models
  rapid-adapt adapt --model omniglot-conv4 ./classes --wait      # ./classes/LABEL/*.png
  rapid-adapt adapt --model sinusoid-mlp points.csv --wait        # rows of x,y
  rapid-adapt predict ad_0123... query1.png query2.png
  rapid-adapt list --all --metadata team=vision
  rapid-adapt events ad_0123...
  rapid-adapt cancel ad_0123...
"""


class Exit(Exception):
    def __init__(self, code: int, message: str = ""):
        super().__init__(message)
        self.code, self.message = code, message


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rapid-adapt",
        description="Adapt meta-trained bases to your few examples, and predict, over the Rapid Adapt API.",
        epilog=EXAMPLES + "\n" + __doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", help="the service (default: $RAPID_ADAPT_URL, else http://127.0.0.1:8000)")
    p.add_argument("--key", help="API key (default: $RAPID_ADAPT_API_KEY)")
    p.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("status", help="the service at a glance: ready, Redis, workers, bases, your key")
    sub.add_parser("models", help="the bases you can adapt")
    a = sub.add_parser("adapt", help="queue an adaptation from support examples")
    a.add_argument("--model", required=True, help="a base from `rapid-adapt models`")
    a.add_argument("support", nargs="+", type=Path, help="a folder of class folders of images, a .csv, a .json")
    a.add_argument(
        "--mode",
        choices=["auto", "fast", "fine-tune"],
        help="fast: the head adapts (milliseconds); fine-tune: the last block too, for images unlike the base's "
        "training data; auto (default): the service chooses from the support set",
    )
    a.add_argument("--steps", type=int, help="inner-loop steps (default: the mode's; `models --json` gives the most)")
    a.add_argument("--ttl", type=int, help="seconds to keep it (default: the service's, an hour)")
    a.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")
    a.add_argument("--wait", action="store_true", help="wait for the job to end, showing its progress")
    a.add_argument("--timeout", type=float, default=300.0, help="how long --wait waits (seconds)")
    r = sub.add_parser("predict", help="predict inputs with an adaptation")
    r.add_argument("id")
    r.add_argument(
        "inputs", nargs="+", type=Path, help="images, folders of images, a .csv (one input per row), a .json"
    )
    r.add_argument("--wait", type=float, help="wait up to this many seconds for the adaptation to finish")
    for name, help_ in (
        ("get", "one adaptation"),
        ("events", "its job's events"),
        ("cancel", "cancel its job"),
        ("delete", "delete it"),
    ):
        sub.add_parser(name, help=help_).add_argument("id")
    ls = sub.add_parser("list", help="your adaptations, newest first")
    ls.add_argument("--all", action="store_true", help="every page")
    ls.add_argument("--limit", type=int, default=20)
    ls.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")
    return p


def pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise Exit(2, f"--metadata takes KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells)


def show(args, value, rows=None, header=None) -> None:
    if args.json or rows is None:
        print(json.dumps(value, indent=2, ensure_ascii=False))
    else:
        print(table(rows, header))


def adaptation_row(a: dict) -> list:
    m = a.get("metrics") or {}
    classes = len(a["classes"]) if a.get("classes") else ""
    return [a["id"], a["status"], a["model"], m.get("mode", a.get("mode")), classes, a["created_at"]]


def status(args, c: Client) -> int:
    """Exit 0 when the service is ready and the key accepted, 4 when it is not ready, 1 when the
    key is refused."""
    h = c.health()
    rows = [
        ["service", str(c.http.base_url).rstrip("/")],
        ["status", h["status"]],
        ["redis", h.get("redis", "")],
        ["workers alive", h.get("workers", "")],
        ["bases", ", ".join(h.get("bases", []))],
    ]
    code = 0 if h["status"] == "ready" else 4
    try:
        latest = c.adaptations(limit=1)["data"]
        rows.append(["your key", "accepted"])
        rows.append(["your latest", f"{latest[0]['id']} {latest[0]['status']}" if latest else "no adaptations yet"])
    except RapidAdaptError as exc:
        if exc.status != 401:
            raise
        rows.append(["your key", "refused" + hint(exc, args).replace("\n ", ":")])
        code = code or 1
    show(args, {r[0]: r[1] for r in rows}, rows[1:], rows[0])
    return code


def run(args, c: Client) -> int:
    if args.command == "status":
        return status(args, c)
    if args.command == "models":
        ms = c.models()
        rows = [
            [
                m["name"],
                m["task"],
                f"{m['input']['kind']} {m['input']['shape']}",
                m.get("max_ways") or "",
                ", ".join(m.get("modes", {})),
            ]
            for m in ms
        ]
        show(args, ms, rows, ["name", "task", "input", "max_ways", "modes"])
    elif args.command == "adapt":
        try:
            support = [e for path in args.support for e in read_support(path)]
        except (OSError, ValueError) as exc:
            raise Exit(2, str(exc)) from None
        a = c.create_adaptation(
            args.model,
            support,
            mode=args.mode,
            steps=args.steps,
            ttl_seconds=args.ttl,
            metadata=pairs(args.metadata) or None,
        )
        print(f"{a['id']} {a['status']} ({len(support)} examples)", file=sys.stderr)
        if args.wait:
            a = c.wait(a["id"], timeout=args.timeout, on_event=progress)
            if a["status"] not in DONE:
                raise Exit(5, f"{a['id']} still {a['status']} after {args.timeout:.0f} s")
        show(args, a, [adaptation_row(a)], ["id", "status", "model", "mode", "classes", "created"])
        if a["status"] in ("failed", "cancelled"):
            return 3
    elif args.command == "predict":
        try:
            inputs = read_inputs(args.inputs)
        except (OSError, ValueError) as exc:
            raise Exit(2, str(exc)) from None
        preds = c.predict(args.id, inputs, wait=args.wait)
        files = expand(args.inputs)
        names = [str(p) for p in files] if len(inputs) == len(files) else [str(i) for i in range(len(inputs))]
        if preds and "label" in preds[0]:
            rows = [[n, p["label"], f"{max(p['scores'].values()):.3f}"] for n, p in zip(names, preds)]
            show(args, preds, rows, ["input", "label", "score"])
        else:
            show(args, preds, [[n, p["value"]] for n, p in zip(names, preds)], ["input", "value"])
    elif args.command == "get":
        a = c.adaptation(args.id)
        show(args, a, [adaptation_row(a)], ["id", "status", "model", "mode", "classes", "created"])
    elif args.command == "list":
        meta = pairs(args.metadata) or None
        items = (
            list(c.iter_adaptations(metadata=meta)) if args.all else c.adaptations(args.limit, metadata=meta)["data"]
        )
        show(args, items, [adaptation_row(a) for a in items], ["id", "status", "model", "mode", "classes", "created"])
    elif args.command == "events":
        items = list(c.iter_events(args.id))
        rows = [[e["id"], e["created_at"], e["type"], json.dumps(e.get("data") or {})] for e in items]
        show(args, items, rows, ["id", "time", "type", "data"])
    elif args.command == "cancel":
        a = c.cancel(args.id)
        show(args, a, [adaptation_row(a)], ["id", "status", "model", "mode", "classes", "created"])
    elif args.command == "delete":
        c.delete(args.id)
        print(f"deleted {args.id}", file=sys.stderr)
    return 0


def hint(exc: RapidAdaptError, args) -> str:
    """What to do about an error the caller's settings cause."""
    if exc.status == 401:
        return "\n  set RAPID_ADAPT_API_KEY or pass --key (the quick start's key is demo-key)"
    if exc.status == 0:
        url = args.url or os.environ.get("RAPID_ADAPT_URL") or "http://127.0.0.1:8000"
        return f"\n  nothing answered at {url}: is the service running there? (--url or RAPID_ADAPT_URL)"
    return ""


def progress(e: dict) -> None:
    data = e.get("data") or {}
    detail = f" {data['step']}: loss {data['loss']:.4f}" if e["type"] == "step" else ""
    print(f"  {e['created_at']} {e['type']}{detail}", file=sys.stderr)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        with Client(args.url, args.key) as c:
            code = run(args, c)
    except Exit as exc:
        print(f"rapid-adapt: {exc.message}", file=sys.stderr)
        code = exc.code
    except RapidAdaptError as exc:
        print(f"rapid-adapt: {exc}{hint(exc, args)}", file=sys.stderr)
        code = 4 if exc.status in (0, 502, 503, 504) else 1
    if __name__ == "__main__" or argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
