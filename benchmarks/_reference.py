"""Pieces shared by the side-by-side scripts against the authors' code (``tta_reference``,
``itta_reference``): running selected definitions of an authors' file, the largest difference of
two lists of tensors, and alternating timing."""
import ast
import statistics
import time


def authors_definitions(path, names, namespace, hint=""):
    """Execute only the top-level classes/functions ``names`` of the authors' file ``path`` (ast-extracted)
    into ``namespace``; a name the file lacks stops with a message (``hint``: which repository is expected)."""
    tree = ast.parse(open(path).read())
    body = [n for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name in names]
    missing = set(names) - {n.name for n in body}
    if missing:
        raise SystemExit(f"{path} has no top-level {', '.join(sorted(missing))}{hint}")
    exec(compile(ast.Module(body=body, type_ignores=[]), path, "exec"), namespace)
    return namespace


def worst(a, b):
    """Largest |u - v| over the paired tensors of ``a`` and ``b``, computed in float64 (so float64
    runs show their differences too)."""
    if len(a) != len(b):
        raise SystemExit(f"cannot compare: {len(a)} tensors against {len(b)}")
    return max((float((u.detach().double() - v.detach().double()).abs().max()) for u, v in zip(a, b)
                if u.numel()), default=0.0)


def alternate(pairs):
    """Median seconds of (ours, theirs) over ``pairs`` of zero-argument calls, run one after the other."""
    t_ours, t_ref = [], []
    for run_ours, run_theirs in pairs:
        t0 = time.perf_counter()
        run_ours()
        t1 = time.perf_counter()
        run_theirs()
        t_ours.append(t1 - t0)
        t_ref.append(time.perf_counter() - t1)
    return statistics.median(t_ours), statistics.median(t_ref), len(t_ours)
