"""``python -m lpft.vision.data check --root DIR``: what is present, per benchmark and split.

A root-defined benchmark (``folder``) is checked only when named (``--benchmark folder``): its splits are the
ones found under the root, and each row also says how many classes the split holds and which are missing.

Each split is opened exactly as a run would open it (no image is decoded) and its image count is compared
with the official one: ``found`` (count reached, or no official count), ``incomplete`` (files or class
folders missing, or fewer images than official), ``missing`` (not there at all), ``error`` (present but
malformed, e.g. a bad split file), ``corrupt`` (with ``--verify-images``: some images cannot be decoded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from lpft.vision.data.base import DatasetNotFoundError, check_selection, get_benchmark, list_benchmarks
from lpft.vision.data.folders import DatasetIncompleteError, cached_listings


@dataclass
class SplitStatus:
    """The state of one split under a root."""

    benchmark: str
    split: str
    status: str  # found | incomplete | missing | error | corrupt
    found: int | None
    expected: int | None
    detail: str = ""


def official_counts(name: str, selection: str = "heldout") -> dict[str, int | None]:
    """Official image count per split of benchmark ``name`` under ``selection`` (empty when unknown)."""
    from lpft.vision.data import breeds, cifar, domainnet, imagenet

    if name in ("living17", "entity30"):
        return breeds.official_counts(name, get_benchmark(name).selection_used(selection))
    table = {"imagenet": imagenet.official_counts, "domainnet": domainnet.official_counts, "cifar10": cifar.official_counts}
    return table[name](get_benchmark(name).selection_used(selection)) if name in table else {}


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def find_corrupt(ds, progress: bool = True, desc: str = "") -> list[str]:
    """Decode every image of split ``ds``; returns the files that cannot be decoded."""
    from tqdm import tqdm

    from lpft.vision.data.folders import CorruptImageError

    bad = []
    for i in tqdm(range(len(ds)), desc=f"decode {desc}", disable=not progress, leave=False):
        try:
            ds.load_item(i)
        except CorruptImageError:
            bad.append(str(ds.samples[i][0]))
    return bad


def check_root(
    root,
    names: Iterable[str] | None = None,
    *,
    selection: str = "heldout",
    options: Mapping[str, str] | None = None,
    verify_images: bool = False,
    progress: bool = False,
) -> list[SplitStatus]:
    """Status of every split of the benchmarks ``names`` (default: all that need a data root).

    Splits are opened under ``selection`` (``"paper"``: ``id_train`` is the full train split and
    ``id_val`` the official selection set). ``options`` go to the benchmarks that declare them (e.g.
    ``{"fmow_val": "ood"}`` reaches only ``fmow``); an option no checked benchmark declares is an error.
    With ``verify_images`` every image is decoded (slow on real data) and a split with undecodable files
    gets status ``corrupt``, its detail naming the count and the first file.
    """
    from lpft.vision.data.fmow import WildsMissingError

    check_selection(selection)
    out: list[SplitStatus] = []
    # a root-defined benchmark (folder) is a layout of the user's own data, not a dataset to look for
    names = list(names) if names is not None else [
        n for n in list_benchmarks() if get_benchmark(n).needs_root and not get_benchmark(n).root_defined]
    benches = [get_benchmark(n) for n in names]
    options = dict(options or {})
    unused = set(options) - {k for b in benches for k in b.options}
    if unused:
        owners = {k: [n for n in list_benchmarks() if k in get_benchmark(n).options] for k in sorted(unused)}
        raise ValueError("no checked benchmark has option(s) " + "; ".join(
            f"{k} (declared by: {', '.join(v) or 'no benchmark'})" for k, v in owners.items()))
    with cached_listings():
        for bench in benches:
            name = bench.name
            opts = bench.resolve_options({k: v for k, v in options.items() if k in bench.options})
            counts = official_counts(name, selection)
            try:
                bench = bench.for_root(root)
            except DatasetNotFoundError as e:  # what defines the benchmark's splits is missing
                out.append(SplitStatus(name, "id_train", "missing", None, None, _first_line(e)))
                continue
            except ValueError as e:
                out.append(SplitStatus(name, "id_train", "error", None, None, _first_line(e)))
                continue
            for split in bench.splits:
                exp = counts.get(split)
                try:
                    ds = bench.load(root, split, selection=selection, options=opts)
                    n = len(ds)
                    bad = find_corrupt(ds, progress, f"{name}/{split}") if verify_images else []
                except WildsMissingError as e:
                    out.append(SplitStatus(name, split, "missing", None, exp, _first_line(e)))
                except DatasetIncompleteError as e:
                    out.append(SplitStatus(name, split, "incomplete", e.found, exp, _first_line(e)))
                except DatasetNotFoundError as e:
                    out.append(SplitStatus(name, split, "missing", None, exp, _first_line(e)))
                except (ValueError, OSError) as e:
                    out.append(SplitStatus(name, split, "error", None, exp, _first_line(e)))
                else:
                    status = "found" if exp is None or n >= exp else "incomplete"
                    detail = "" if exp is None or n == exp else f"{n - exp:+,} images vs official"
                    detail = "; ".join(x for x in (_classes_detail(ds, bench), detail) if x)
                    if bad:
                        status = "corrupt"
                        detail = f"{len(bad)} undecodable image(s), e.g. {bad[0]}" + (f"; {detail}" if detail else "")
                    out.append(SplitStatus(name, split, status, n, exp, detail))
    return out


def _classes_detail(ds, bench) -> str:
    """Classes of a split that records them (``folder``): ``"4 classes"``, or which are missing."""
    info = getattr(ds, "split_info", {})
    if "num_classes" not in info:
        return ""
    missing = info.get("missing_classes") or []
    text = f"{info['num_classes']} of {bench.num_classes} classes" if missing else f"{info['num_classes']} classes"
    if missing:
        text += f", missing: {', '.join(missing[:8])}{', ...' if len(missing) > 8 else ''}"
        if getattr(ds, "class_mask", None) is not None:
            text += " (masked)"
    return text


def format_report(rows: list[SplitStatus]) -> str:
    """A fixed-width table of :func:`check_root` rows."""
    def num(x):
        return "-" if x is None else f"{x:,}"

    lines = [f"{'benchmark':<10} {'split':<16} {'status':<11} {'found':>10} {'official':>10}  detail"]
    for r in rows:
        lines.append(f"{r.benchmark:<10} {r.split:<16} {r.status:<11} {num(r.found):>10} {num(r.expected):>10}  {r.detail}")
    return "\n".join(lines)
