"""Choosing the small tables: `multihash_dims`.

A multi-hash table of k small tables holds `prod(rows)` ids in
`sum(rows) * width` parameters (per table width for concat), so for a given
number of ids the cheapest layout makes the row counts as equal as the
strategy allows.
"""

from __future__ import annotations

import math
import numbers
from typing import List, Optional, Union

from tensorflow_multihash import multihash_ops
from tensorflow_multihash.variable import MAX_CAPACITY
from tensorflow_multihash.variable import MAX_PARTITIONS


def _positive_int(value, arg_name):
  if (
      isinstance(value, bool)
      or not isinstance(value, numbers.Integral)
      or value <= 0
  ):
    raise ValueError(
        "%s must be a positive integer, got %r" % (arg_name, value)
    )
  return int(value)


def _num_ids(value):
  """num_ids as an int: a positive integer, or an integral float such as
  1e9; at most MAX_CAPACITY (ids are int64)."""
  if isinstance(value, numbers.Real) and not isinstance(
      value, (bool, numbers.Integral)
  ):
    as_float = float(value)
    if not math.isfinite(as_float) or as_float != math.floor(as_float):
      raise ValueError(
          "num_ids must be a positive integer (or an integral "
          "float such as 1e9), got %r" % (value,)
      )
    value = int(as_float)
  num_ids = _positive_int(value, "num_ids")
  if num_ids > MAX_CAPACITY + 1:
    raise ValueError(
        "num_ids must be at most 2**63 (ids are int64, so at most 2**63 ids "
        "in [0, 2**63) can be named), got %d" % num_ids
    )
  return num_ids


def _iroot(n, k):
  """The largest m with m ** k <= n, in integer arithmetic only (exact for
  any int n >= 1 and k >= 1; Newton's method from above, O(log n) steps)."""
  if k == 1 or n < 2:
    return n
  if k == 2:
    return math.isqrt(n)
  # 2 ** ceil(bits / k) >= n ** (1/k): Newton's iterates decrease
  # monotonically from any start above the root and stop at its floor.
  x = 1 << -(-n.bit_length() // k)
  while True:
    y = ((k - 1) * x + n // x ** (k - 1)) // k
    if y >= x:
      return x
    x = y


def _balanced_rows(num_ids, k):
  """k row counts (descending), product >= num_ids, smallest sum.

  With rows in {m, m + 1} for m = floor(num_ids ** (1/k)), as few tables as
  possible get m + 1: moving one row from a larger table to one smaller by
  two or more never lowers the product, so this sum is the minimum.
  """
  m = max(_iroot(num_ids, k), 1)
  rows = [m] * k
  for j in range(k):
    if math.prod(rows) >= num_ids:
      break
    rows[j] += 1
  return sorted(rows, reverse=True)


def _coprime_rows(num_ids, k):
  """k pairwise coprime row counts (descending), product >= num_ids,
  smallest sum, searched among the values near num_ids ** (1/k)."""
  m = max(_iroot(num_ids, k), 1)
  span = 8
  while True:
    lo, hi = max(1, m - span), m + 2 * span
    best = None

    # Depth-first over non-decreasing values (only 1 may repeat: gcd(1, 1)
    # is 1); prune on the sum found so far.
    def search(start, chosen, total):
      nonlocal best
      if len(chosen) == k:
        if math.prod(chosen) >= num_ids and (best is None or total < best[0]):
          best = (total, list(chosen))
        return
      left = k - len(chosen)
      for v in range(start, hi + 1):
        if best is not None and total + v * left >= best[0]:
          break
        if any(math.gcd(v, c) != 1 for c in chosen):
          continue
        # The product can only reach num_ids if the remaining tables may
        # take values up to hi.
        if math.prod(chosen) * v * hi ** (left - 1) < num_ids:
          continue
        chosen.append(v)
        search(v if v == 1 else v + 1, chosen, total + v)
        chosen.pop()

    search(lo, [], 0)
    if best is not None:
      return sorted(best[1], reverse=True)
    span *= 2


def _split_width(width, k, operation):
  """Per-table widths: `width` each for add and mul; for concat `width`
  split as evenly as possible (the first tables one wider)."""
  if operation != "concat":
    return [width] * k
  if width < k:
    raise ValueError(
        "width must be at least num_of_partitions (%d) for "
        "concat, got %d" % (k, width)
    )
  base, extra = divmod(width, k)
  return [base + 1 if j < extra else base for j in range(k)]


def multihash_dims(
    num_ids: Union[int, float],
    width: int,
    num_of_partitions: int = 2,
    complementary_strategy: str = "Q-R",
    operation: str = "mul",
    num_collisions: Optional[int] = None,
) -> List[List[int]]:
  """The `dims` of a multi-hash table that holds `num_ids` ids.

  Without `num_collisions` the row counts are the cheapest whose capacity
  (their product) covers `num_ids`: as equal as the strategy allows, about
  `k * num_ids ** (1/k)` rows in all instead of `num_ids`; pairwise coprime
  for "CRT". With `num_collisions = c` (k = 2, the Q-R strategies) the
  remainder table gets `c` rows and the quotient table `ceil(num_ids / c)`,
  so that ids sharing a remainder row number at most `ceil(num_ids / c)` and
  ids sharing a quotient row at most `c`.

  Args:
    num_ids: how many ids the table must hold (ids in [0, num_ids)): a
      positive integer (an integral float such as 1e9 is taken as one).
    width: the embedding width of a looked-up id. For add and mul every table
      has this width; for concat it is split over the tables.
    num_of_partitions: k, the number of small tables (2 to 8).
    complementary_strategy: "Q-R" (k = 2), "generalized-Q-R" or "CRT".
    operation: "add", "mul" ("mult" too) or "concat".
    num_collisions: None, or the remainder table's row count (k = 2 and the
      Q-R strategies only).

  Returns:
    A list of k [rows, width] pairs, the first table first, ready for
    `get_multihash_variable(dims=...)`; rows are in descending order.

  Raises:
    ValueError: a bad argument, named with its value; a num_ids above 2**63,
      or one whose tables would hold more ids than int64 ids can name.
  """
  num_ids = _num_ids(num_ids)
  width = _positive_int(width, "width")
  k = _positive_int(num_of_partitions, "num_of_partitions")
  multihash_ops._check_strategy(complementary_strategy)
  operation = multihash_ops._canonical_operation(operation)
  if not 2 <= k <= MAX_PARTITIONS:
    raise ValueError(
        "num_of_partitions must be in [2, %d], got %d" % (MAX_PARTITIONS, k)
    )
  if complementary_strategy == "Q-R" and k != 2:
    raise ValueError("The Q-R strategy needs num_of_partitions = 2, got %d" % k)
  widths = _split_width(width, k, operation)
  if num_collisions is not None:
    num_collisions = _positive_int(num_collisions, "num_collisions")
    if k != 2 or complementary_strategy == "CRT":
      raise ValueError(
          "num_collisions needs num_of_partitions = 2 and a Q-R strategy, "
          "got %d partitions and %r" % (k, complementary_strategy)
      )
    rows = [-(-num_ids // num_collisions), num_collisions]
  elif complementary_strategy == "CRT":
    rows = _coprime_rows(num_ids, k)
  else:
    rows = _balanced_rows(num_ids, k)
  capacity = math.prod(rows)
  if capacity > MAX_CAPACITY:
    raise ValueError(
        "num_ids %d needs tables of %s rows, a capacity of %d ids, more than "
        "int64 ids can name (at most 2**63 - 1); use a smaller num_ids"
        % (num_ids, rows, capacity)
    )
  return [[r, w] for r, w in zip(rows, widths)]
