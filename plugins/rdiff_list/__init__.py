"""rdiff's built-in ``list`` plugin: the ``rdiff list`` and ``rdiff plugins`` commands, added through
``rdiff_register_commands`` as any third-party plugin adds one.

Both only read what the runtime's public API reports (the loaded plugins, what they registered, the shipped
weights), so neither needs torch to answer: ``rdiff plugins`` stays fast even where torch is slow to import.
The one exception is ``rdiff list adaptors --json``, which builds every compatible tiny backbone to count
the parameters each adaptor trains. ``--options`` adds each component's options, read from its config
dataclass (:mod:`rdiff_list.options`), and the training defaults it declares.
"""

from __future__ import annotations

import json
from typing import Any

from rdiff import hookimpl

KINDS = {"backbones": "backbone", "adaptors": "adaptor", "modalities": "modality"}
SECTIONS = {"backbone": "model", "adaptor": "adaptor_options", "modality": "modality_options"}  # their config keys


@hookimpl
def rdiff_register_commands(subparsers):
    p = subparsers.add_parser("plugins", help="list loaded plugins, their distribution, version and hooks")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=list_plugins)

    p = subparsers.add_parser("list", help="list registered backbones, adaptors, modalities or shipped pretrained "
                                           "weights")
    p.add_argument("what", choices=[*KINDS, "pretrained"], help="which kind")
    p.add_argument("--json", action="store_true", help="JSON (adaptors: with trainable/total parameters)")
    p.add_argument("--options", action="store_true",
                   help="also each component's options (key, type, default, description) and training defaults")
    p.set_defaults(handler=list_components)


def _print(rows: list[dict[str, Any]], as_json: bool, line) -> int:
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(line(row))
    return 0


def list_plugins(args) -> int:
    from rdiff.plugins import plugins

    loaded = plugins()
    rows = [{"name": i.name, "module": i.module, "distribution": i.distribution, "version": i.version,
             "hooks": i.hooks, "status": "ok"} for i in loaded.info.values()]
    rows += [{"name": n, "status": "broken", "error": e} for n, e in loaded.broken.items()]
    return _print(rows, args.json, lambda r: (
        f"{r['name']:<12} {r['distribution'] or '-'} {r['version'] or ''}  ({r['module']}): {', '.join(r['hooks'])}"
        if r["status"] == "ok" else f"{r['name']:<12} BROKEN: {r['error']}"))


def list_components(args) -> int:
    from rdiff.plugins import plugins

    if args.what == "pretrained":
        return list_pretrained(args.json)
    loaded, kind = plugins(), KINDS[args.what]
    rows = []
    for name, entry in sorted(loaded.entries[kind].items()):
        row: dict[str, Any] = {"name": name, "plugin": entry.plugin, "summary": entry.summary}
        if kind == "backbone":
            row.update(capabilities=list(entry.capabilities), presets=sorted(entry.presets))
        if kind == "adaptor":
            row["requires"] = list(entry.requires)
            if args.json:
                row["params"] = adaptor_params(name)
        if args.options:
            row.update(options=options_of(entry), train=dict(entry.train))
        rows.append(row)

    def line(r: dict[str, Any]) -> str:
        extra = r.get("capabilities") or r.get("requires") or []
        tag = (" [" + ", ".join(extra) + "]") if extra else ""
        presets = f" presets: {', '.join(r['presets'])}" if r.get("presets") else ""
        return f"{r['name']:<10} {r['summary']}{tag}{presets}" + (format_options(r) if "options" in r else "")

    return _print(rows, args.json, line)


def options_of(entry) -> list[dict[str, Any]]:
    """The options of a registered component: ``{key, type, default, description}`` per key of its config
    dataclass (nested dataclasses as dotted keys), under its section (``model``, ``adaptor_options``, ...)."""
    from rdiff_list.options import config_keys, format_value

    if entry.config is None:
        return []
    section = SECTIONS[entry.kind]
    return [{"key": f"{section}.{key.name}", "type": key.type, "default": format_value(key.default),
             "description": key.comment} for key in config_keys(entry.config) if not key.nested]


def format_options(row: dict[str, Any]) -> str:
    """The options and training defaults of one component, as indented lines under its name."""
    options, lines = row["options"], []
    if options:
        width = [max(len(o[field]) for o in options) for field in ("key", "type", "default")]
        lines += [f"  {o['key']:<{width[0]}}  {o['type']:<{width[1]}}  {o['default']:<{width[2]}}  {o['description']}"
                  .rstrip() for o in options]
    else:
        lines.append("  (no options)")
    if row["train"]:  # declared by an adaptor or a modality, over the backbone's preset
        lines.append("  training defaults: " + ", ".join(f"train.{k}={v}" for k, v in row["train"].items()))
    return "\n" + "\n".join(lines)


def list_pretrained(as_json: bool) -> int:
    from rdiff.pretrained import list_pretrained as shipped

    rows = [describe(p) for p in shipped()]
    if not rows and not as_json:
        print("no pretrained weights are installed")

    def line(r: dict[str, Any]) -> str:
        ceiling = ", ".join(f"{k} {v:g}" for k, v in r["ceiling"].items() if k in ("psnr", "ssim", "vessel_dice"))
        held = f" on {r['held_out_images']} held-out images" if r["held_out_images"] else ""
        return f"{r['name']:<24} {r['size_mb']:5.1f} MB  ceiling{held}: {ceiling or 'not measured'}"

    return _print(rows, as_json, line)


def describe(checkpoint) -> dict[str, Any]:
    """One shipped phase-1 checkpoint as ``rdiff list pretrained --json`` reports it."""
    ceiling = checkpoint.ceiling
    return {"name": checkpoint.name, "backbone": checkpoint.backbone, "preset": checkpoint.preset,
            "modality": checkpoint.modality, "plugin": checkpoint.plugin,
            "size_mb": round(checkpoint.size_bytes / 1e6, 2), "ceiling": dict(ceiling.get("phase1", {})),
            "held_out_images": ceiling.get("images"), "directory": str(checkpoint.directory)}


def adaptor_params(adaptor: str) -> dict[str, dict[str, int]]:
    """Trainable vs total parameters of ``adaptor`` on every compatible backbone's tiny preset."""
    from rdiff import create_adaptor, create_backbone, list_backbones
    from rdiff.plugins import plugins
    from rdiff.report import parameter_counts

    requires = set(plugins().get("adaptor", adaptor).requires)
    out = {}
    for name in list_backbones():
        if not requires <= set(plugins().get("backbone", name).capabilities):
            continue
        backbone = create_backbone(name, preset="tiny")
        create_adaptor(adaptor, backbone)
        counts = parameter_counts(backbone, train_base=False)
        out[f"{name}:tiny"] = {"trainable": counts["trainable"], "total": counts["total"]}
    return out
