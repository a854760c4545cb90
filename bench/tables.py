"""Number helpers shared by the report scripts (stdlib only): parse a CSV
cell, take a median that skips missing values, and format a median with its
min - max spread the way every table in bench/results does."""

import statistics


def num(v):
    """A CSV cell as a float, or None when it is empty or not a number."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def med(vals):
    """Median of the values that are not None, or None."""
    v = [x for x in vals if x is not None]
    return statistics.median(v) if v else None


def fmt(x, d=0):
    return "NA" if x is None else f"{x:,.{d}f}"


def rng(vals, d=0):
    """"median (min – max)", or the one value, or NA."""
    v = [x for x in vals if x is not None]
    if not v:
        return "NA"
    if len(v) == 1:
        return fmt(v[0], d)
    return f"{fmt(med(v), d)} ({fmt(min(v), d)} – {fmt(max(v), d)})"
