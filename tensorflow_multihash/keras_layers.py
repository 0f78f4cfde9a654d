"""`MultiHashEmbedding`: a Keras 3 layer over the fused multi-hash lookup.

Reach it as `tensorflow_multihash.keras.MultiHashEmbedding` (or import it from
this module). It needs Keras 3 with the TensorFlow backend.

The layer owns k small tables (Keras weights `multhash_Q` and `multhash_R` for
k = 2, the names DeepRec's variables use; `multhash_0` ... otherwise), held
as attributes of those names so that every way Keras and TensorFlow save a
layer (`tf.train.Checkpoint`, `.keras`, `.weights.h5`, SavedModel) finds
them. Ids are looked up with the `MultiHashLookup` op, which reads the tables
in place and whose gradient reaches each table as a `tf.IndexedSlices` (the
distinct rows the batch touched); under XLA (`jit_compile=True`) the same
lookup is computed from stock ops (`tensorflow_multihash.xla_lookup`).

Loading a `.keras` file that holds the layer needs the class registered:
import this module (or touch `tensorflow_multihash.keras`) before
`keras.saving.load_model`. `import tensorflow_multihash` does that by itself
whenever Keras was already imported, as `import tensorflow` does.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Optional, Sequence

import keras
import tensorflow as tf

from tensorflow_multihash import multihash_ops
from tensorflow_multihash import variable as variable_lib
from tensorflow_multihash import xla_lookup

if int(keras.__version__.split(".")[0]) < 3:
  raise ImportError(
      "tensorflow_multihash.keras needs Keras 3, found keras %s"
      % keras.__version__
  )

# `keras.layers.Embedding`'s default initializer is uniform in
# [-0.05, 0.05]: its output's standard deviation is 0.05 / sqrt(3).
EMBEDDING_DEFAULT_LIMIT = 0.05
EMBEDDING_DEFAULT_STD = EMBEDDING_DEFAULT_LIMIT / math.sqrt(3.0)


def _count(value, arg_name):
  """A positive integer argument (an integral float such as 1e6 is taken as
  an int); None stays None. ValueError otherwise."""
  if value is None:
    return None
  if isinstance(value, float) and value.is_integer():
    value = int(value)
  if (
      isinstance(value, bool)
      or not isinstance(value, numbers.Integral)
      or value <= 0
  ):
    raise ValueError(
        "%s must be a positive integer, got %r" % (arg_name, value)
    )
  return int(value)


def default_initializer_limits(operation, num_tables):
  """Per-table limits `a` of the default uniform initializers U(-a, a).

  Chosen so that the composed output has the standard deviation of
  `keras.layers.Embedding`'s default output, s = 0.05 / sqrt(3), when the k
  tables are drawn independently:

    concat: each part is an output element, so a = 0.05;
    add:    a sum of k terms of variance a**2 / 3, so a = 0.05 / sqrt(k);
    mul:    a product of k such terms has variance (a**2 / 3) ** k, so
            a = sqrt(3) * s ** (1 / k) (0.294 for k = 2, 0.531 for k = 3).

  (Keras's "uniform", U(-0.05, 0.05), on every table instead gives a mul
  output of std s ** k: 8e-4 for k = 2, 2e-5 for k = 3, which Adagrad and
  SGD barely move.)

  Args:
    operation: "add", "mul" or "concat".
    num_tables: k.

  Returns:
    A list of k floats.
  """
  if operation == "concat":
    a = EMBEDDING_DEFAULT_LIMIT
  elif operation == "add":
    a = EMBEDDING_DEFAULT_LIMIT / math.sqrt(num_tables)
  else:
    a = math.sqrt(3.0) * EMBEDDING_DEFAULT_STD ** (1.0 / num_tables)
  return [a] * num_tables


def _id_dtype(ids):
  """int32 and int64 ids as they are, other integer ids as int64."""
  return ids if ids.dtype in (tf.int32, tf.int64) else tf.cast(ids, tf.int64)


@keras.saving.register_keras_serializable(package="tensorflow_multihash")
class MultiHashEmbedding(keras.layers.Layer):
  """Embeds ids through k small tables combined by add, mul or concat.

  A drop-in for `keras.layers.Embedding`: `MultiHashEmbedding(input_dim,
  output_dim, ...)` takes the same first six arguments, positionally or by
  keyword, and its memory is the sum of the small tables instead of
  `input_dim * output_dim`. With the "Q-R" strategy (k = 2) id x reads row
  `x // rows_R` of table Q and row `x % rows_R` of table R, a pair unique to
  x for every x below `rows_Q * rows_R` (the capacity), and the two rows are
  combined by `operation`.

  Give either `dims` (the [rows, width] of every table) or `input_dim`
  (alias `num_ids`) and `output_dim` (and optionally `num_collisions`),
  which are turned into dims by `tensorflow_multihash.multihash_dims`.

  The default operation is "mul": in the quality study of this project
  (benchmarks/quality), trained with Adam, it keeps a recommender's AUC
  closest to a full table at every budget. Its default initialisation
  (below) gives the output the scale of `keras.layers.Embedding`'s, which
  optimizers that do not rescale updates (Adagrad, SGD) need.

  Sparse updates: the gradient reaches each table as a `tf.IndexedSlices` of
  the distinct rows in the batch. Among Keras 3 optimizers (TensorFlow
  backend) only plain `SGD` (no momentum) applies it with scatter updates,
  so rows no id touched stay bit-for-bit unchanged; SGD with momentum, Adam
  and others densify it and rewrite whole tables and slots each step, and
  Adagrad scatters but computes over its whole accumulator. The tables are
  small, so the dense cost is modest. An `embeddings_regularizer` adds a
  dense gradient over whole tables and `embeddings_constraint` is applied to
  whole tables, so either one makes updates dense too.

  XLA: with `model.compile(jit_compile=True)` (or Keras's default "auto" on
  a GPU) the lookup is computed from stock ops XLA compiles, with the same
  numbers. XLA cannot raise a run-time error: there an id out of range
  (with out_of_range="error") gives an embedding of NaNs instead of an
  `InvalidArgumentError` (see `tensorflow_multihash.xla_lookup`).

  Args:
    input_dim: the number of distinct ids (ids are in [0, input_dim)), as in
      `keras.layers.Embedding`; `num_ids` is the same argument. Required
      without `dims`; with `dims` it is optional and, when `out_of_range` is
      "error", must not exceed the capacity, and ids at or above it are an
      error even where the tables have rows for them.
    output_dim: width of an embedding. Required without `dims`; with `dims`
      it must equal the width the dims give, if set.
    embeddings_initializer: None (the default) for uniform initializers
      scaled per operation and k so that the composed output has the
      standard deviation of `keras.layers.Embedding`'s default output
      (`default_initializer_limits`); else a Keras initializer (name, dict
      or object) for every table, or a list of k of them, one per table.
      Keras's "uniform" on every table makes a "mul" output tiny (std 8e-4
      for k = 2).
    embeddings_regularizer: a Keras regularizer applied to every table.
    embeddings_constraint: a Keras constraint applied to every table.
    mask_zero: if True, id 0 is padding: `compute_mask` returns `ids != 0`
      (for string ids with `hash_strings`, `ids != ""`); id 0 is still
      looked up, as in `keras.layers.Embedding`.
    num_ids: the same as `input_dim` (give either, or both equal).
    dims: a list of k [rows, width] pairs, first Q then R for "Q-R". For
      "add"/"mul" the widths are equal and are the output width; for
      "concat" the output width is their sum.
    num_collisions: with `input_dim`, passed to `multihash_dims`
      (DLRM-style sizing: the remainder table gets `num_collisions` rows and
      the quotient table `ceil(input_dim / num_collisions)`). Not allowed
      with `dims`.
    operation: "mul" (default; alias "mult"), "add" or "concat".
    complementary_strategy: how ids pick rows: "Q-R" (k = 2),
      "generalized-Q-R" or "CRT".
    num_of_partitions: the number of small tables k, for `input_dim`
      (default 2); with `dims` it must equal `len(dims)` if set.
    out_of_range: "error" (an id outside [0, input_dim), or [0, capacity)
      without `input_dim`, makes the lookup fail with
      `tf.errors.InvalidArgumentError`) or "wrap" (ids are taken modulo the
      capacity first, so tables smaller than the vocabulary work as a
      hashed embedding; unsigned ids wrap in unsigned arithmetic).
    hash_strings: if True, string ids are hashed with
      `tf.strings.to_hash_bucket_fast` into [0, input_dim) (out_of_range
      "error" with `input_dim`) or into [0, capacity) (otherwise); integer
      ids are used as they are.
    **kwargs: base `keras.layers.Layer` arguments (name, dtype, trainable...).

  Raises:
    ValueError: a missing, conflicting or malformed size argument, an unknown
      operation, strategy or `out_of_range`, or a wrong number of
      initializers; the message names the argument and its value.

  Call arguments:
    inputs: ids of any shape: integers (int32 and int64 are used as they are,
      other integer dtypes are cast to int64), or strings with
      `hash_strings=True`. Floats are a `TypeError`.

  Output: `inputs.shape + [output_dim]`, in the layer's compute dtype.
  """

  def __init__(
      self,
      input_dim: Optional[int] = None,
      output_dim: Optional[int] = None,
      embeddings_initializer: Any = None,
      embeddings_regularizer: Any = None,
      embeddings_constraint: Any = None,
      mask_zero: bool = False,
      *,
      num_ids: Optional[int] = None,
      dims: Optional[Sequence[Sequence[int]]] = None,
      num_collisions: Optional[int] = None,
      operation: str = "mul",
      complementary_strategy: str = "Q-R",
      num_of_partitions: Optional[int] = None,
      out_of_range: str = "error",
      hash_strings: bool = False,
      **kwargs: Any,
  ) -> None:
    for arg in ("weights", "lora_rank", "lora_alpha"):
      if kwargs.get(arg) is not None:
        raise ValueError(
            "MultiHashEmbedding has no %s argument (a keras.layers.Embedding "
            "argument for one full [input_dim, output_dim] matrix); set the "
            "small tables with layer.set_weights([...]) after build, got "
            "%s=%r" % (arg, arg, kwargs[arg])
        )
      kwargs.pop(arg, None)
    if kwargs.pop("input_length", None) is not None:
      warnings.warn(
          "Argument `input_length` is deprecated (as in "
          "keras.layers.Embedding). Just remove it.",
          stacklevel=2,
      )
    super().__init__(**kwargs)
    operation = multihash_ops._canonical_operation(operation)
    multihash_ops._check_strategy(complementary_strategy)
    multihash_ops._check_out_of_range(out_of_range)
    if not isinstance(hash_strings, bool):
      raise ValueError(
          "hash_strings must be True or False, got %r" % (hash_strings,)
      )
    input_dim = _count(input_dim, "input_dim")
    num_ids = _count(num_ids, "num_ids")
    if input_dim is not None and num_ids is not None and input_dim != num_ids:
      raise ValueError(
          "input_dim and num_ids are two names of one argument (the number "
          "of ids); give one, got input_dim=%r and num_ids=%r"
          % (input_dim, num_ids)
      )
    num_ids = num_ids if num_ids is not None else input_dim
    output_dim = _count(output_dim, "output_dim")
    if num_ids is not None and num_ids > variable_lib.MAX_CAPACITY:
      raise ValueError(
          "input_dim (num_ids) must be at most 2**63 - 1 (ids "
          "are int64), got %d" % num_ids
      )

    if dims is None:
      if num_ids is None or output_dim is None:
        raise ValueError(
            "MultiHashEmbedding needs input_dim (or num_ids) and output_dim, "
            "or dims; got input_dim=%r, output_dim=%r, dims=None"
            % (num_ids, output_dim)
        )
      from tensorflow_multihash import sizing  # pylint: disable=g-import-not-at-top

      dims = sizing.multihash_dims(
          num_ids,
          output_dim,
          num_of_partitions=2
          if num_of_partitions is None
          else num_of_partitions,
          complementary_strategy=complementary_strategy,
          operation=operation,
          num_collisions=num_collisions,
      )
    elif num_collisions is not None:
      raise ValueError(
          "num_collisions sizes the tables from input_dim; it "
          "cannot be combined with dims, got num_collisions=%r"
          % (num_collisions,)
      )
    if num_of_partitions is None:
      num_of_partitions = len(dims) if isinstance(dims, (list, tuple)) else 2
    dims, operation = variable_lib.validate_config(
        dims, num_of_partitions, complementary_strategy, operation
    )

    widths = [w for _, w in dims]
    width = sum(widths) if operation == "concat" else widths[0]
    if output_dim is not None and output_dim != width:
      raise ValueError(
          "output_dim=%r does not match dims %s, whose output "
          "width for %r is %d" % (output_dim, dims, operation, width)
      )
    capacity = multihash_ops._capacity_of(
        [r for r, _ in dims], complementary_strategy
    )
    if num_ids is not None and out_of_range == "error" and num_ids > capacity:
      raise ValueError(
          "input_dim (num_ids) %d exceeds the capacity %d of dims %s; give "
          'bigger dims or out_of_range="wrap"' % (num_ids, capacity, dims)
      )

    self._initializer_arg = embeddings_initializer
    if embeddings_initializer is None:
      initializers = [
          keras.initializers.RandomUniform(-a, a)
          for a in default_initializer_limits(operation, len(dims))
      ]
    elif isinstance(embeddings_initializer, (list, tuple)):
      if len(embeddings_initializer) != len(dims):
        raise ValueError(
            "embeddings_initializer must be one initializer or a list of %d "
            "(one per table), got a list of %d"
            % (len(dims), len(embeddings_initializer))
        )
      initializers = [keras.initializers.get(i) for i in embeddings_initializer]
    else:
      initializers = [keras.initializers.get(embeddings_initializer)] * len(
          dims
      )
    self._initializers = initializers

    self.num_ids = num_ids
    self.dims = dims
    self.output_dim = width
    self.capacity = capacity
    self.operation = operation
    self.complementary_strategy = complementary_strategy
    self.out_of_range = out_of_range
    self.hash_strings = hash_strings
    self.embeddings_regularizer = keras.regularizers.get(embeddings_regularizer)
    self.embeddings_constraint = keras.constraints.get(embeddings_constraint)
    self.mask_zero = mask_zero
    self.supports_masking = mask_zero
    # XLA has no string ops: Keras's jit_compile="auto" then stays off, and
    # jit_compile=True warns and runs without XLA, as for keras.layers.Hashing.
    self.supports_jit = not hash_strings
    # The op reads the float32 tables in place; autocasting would copy each
    # whole table to the compute dtype every step. The output is cast.
    self.autocast = False
    # Attribute names of the tables, which are also their weight names and
    # their checkpoint keys.
    self._table_names = tuple(variable_lib.table_suffixes(len(dims)))
    # Tables whose checkpoint restore waits for their values (see
    # `_handle_deferred_dependencies`); a plain set, outside Keras's and
    # TensorFlow's attribute tracking.
    object.__setattr__(self, "_pending_restores", set())

  @property
  def input_dim(self):
    """`keras.layers.Embedding`'s name for `num_ids`."""
    return self.num_ids

  @property
  def embeddings_initializer(self):
    """The initializer of every table, or the list of them when they
    differ (always a list for the default, which scales per table)."""
    if self._initializer_arg is None or isinstance(
        self._initializer_arg, (list, tuple)
    ):
      return list(self._initializers)
    return self._initializers[0]

  @property
  def tables(self):
    """The k small tables (Keras variables), in order; [] before build."""
    if not self.built:
      return []
    return [getattr(self, name) for name in self._table_names]

  def build(self, input_shape=None):
    if self.built:
      return
    for (rows, width), init, name in zip(
        self.dims, self._initializers, self._table_names
    ):
      # An attribute, not a list entry: TensorFlow's checkpointing (and so
      # tf.train.Checkpoint, BackupAndRestore and SavedModel) tracks
      # variables held in attributes only, and a checkpoint restored before
      # build is applied here, as each table is assigned.
      setattr(
          self,
          name,
          self.add_weight(
              shape=(rows, width),
              initializer=init,
              name=name,
              regularizer=self.embeddings_regularizer,
              constraint=self.embeddings_constraint,
              trainable=True,
          ),
      )
    self.built = True

  def _handle_deferred_dependencies(self, name, trackable):
    """Applies a checkpoint restored before build to a table as it is
    assigned, or, for a table without a value yet, at the next call.

    A model's first call builds the layers inside Keras's stateless scope
    (a symbolic run), where new variables have no value until the scope
    ends; a restore then fails, and Keras swallows the failure. So such a
    table's restore waits for `call` (as TensorFlow's own deferred restore,
    it then runs eagerly, lifted out of any graph being traced).
    """
    if (
        name in self._table_names
        and name in self._deferred_dependencies
        and getattr(trackable, "_value", True) is None
    ):
      self._pending_restores.add(name)
      return
    with tf.init_scope():  # a restore inside a traced graph would not run
      super()._handle_deferred_dependencies(name, trackable)

  def _restore_pending(self):
    names = [
        n
        for n in sorted(self._pending_restores)
        if getattr(getattr(self, n), "_value", None) is not None
    ]
    if not names:
      return
    with tf.init_scope():
      for name in names:
        self._pending_restores.discard(name)
        super()._handle_deferred_dependencies(name, getattr(self, name))

  def _hash_buckets(self):
    if self.out_of_range == "error" and self.num_ids is not None:
      return self.num_ids
    return self.capacity

  def _ids(self, inputs):
    """(`inputs` as int32/int64 ids, None or a bool tensor).

    The op checks ids against [0, capacity). A smaller `num_ids`, and uint64
    ids that int64 cannot hold, are checked here: an InvalidArgumentError,
    or under XLA (which cannot fail) the bool tensor of the valid ids, whose
    invalid rows `call` sets to NaN.
    """
    if isinstance(inputs, (tf.SparseTensor, tf.RaggedTensor)):
      raise TypeError(
          "MultiHashEmbedding takes dense ids, got a %s as "
          "inputs" % type(inputs).__name__
      )
    ids = inputs if tf.is_tensor(inputs) else tf.convert_to_tensor(inputs)
    if ids.dtype == tf.string:
      if not self.hash_strings:
        raise TypeError(
            "MultiHashEmbedding got string ids; pass hash_strings=True to "
            "hash them into the tables, or map them to integers first (for "
            "example with keras.layers.Hashing or keras.layers.StringLookup)"
        )
      return tf.strings.to_hash_bucket_fast(ids, self._hash_buckets()), None
    if not ids.dtype.is_integer:
      raise TypeError(
          "MultiHashEmbedding inputs must be integer ids%s, got "
          "dtype %s"
          % (" or strings" if self.hash_strings else "", ids.dtype.name)
      )
    if self.out_of_range == "wrap":
      if ids.dtype == tf.uint64:
        # Unsigned arithmetic: as int64, 2**64 - 1 would be -1.
        ids = tf.math.floormod(ids, tf.constant(self.capacity, tf.uint64))
      return _id_dtype(ids), None
    bound = self.num_ids if self.num_ids is not None else self.capacity
    valid = None
    if bound < self.capacity or ids.dtype == tf.uint64:
      # Checked in the ids' own dtype, before any cast.
      if xla_lookup.in_xla_context():
        valid = xla_lookup.valid_ids(ids, bound)
      else:
        ids = self._check_range(ids, bound)
    return _id_dtype(ids), valid

  def _check_range(self, ids, bound):
    """`ids`, after a check that fails (InvalidArgumentError) on an id
    outside [0, bound), naming the first one."""
    flat_ids = tf.reshape(ids, [-1])
    flat_valid = xla_lookup.valid_ids(flat_ids, bound)
    all_valid = tf.reduce_all(flat_valid)

    def message():
      first_bad = tf.gather(flat_ids, tf.argmin(tf.cast(flat_valid, tf.int32)))
      return tf.strings.format(
          "MultiHashEmbedding %s: id {} is outside the valid range [0, %d) "
          '(%s=%d); pass out_of_range="wrap" to fold ids into the '
          "capacity of the tables, %d"
          % (
              self.name,
              bound,
              "input_dim" if self.num_ids is not None else "capacity",
              bound,
              self.capacity,
          ),
          [first_bad],
      )

    if tf.executing_eagerly():
      if not all_valid:
        raise tf.errors.InvalidArgumentError(
            None, None, message().numpy().decode()
        )
      return ids
    with tf.control_dependencies([tf.debugging.Assert(all_valid, [message()])]):
      return tf.identity(ids)

  def call(self, inputs):
    if self._pending_restores:
      self._restore_pending()
    ids, valid = self._ids(inputs)
    # `.value` is the backing tf.Variable (or, inside a stateless scope, the
    # scope's tensor): the op then reads the resource in place and the tape
    # records the read, so the gradient reaches the Keras weight.
    tables = [w.value for w in self.tables]
    out = multihash_ops.multihash_lookup(
        tables,
        ids,
        operation=self.operation,
        complementary_strategy=self.complementary_strategy,
        out_of_range=self.out_of_range,
    )
    if valid is not None:
      out = xla_lookup.nan_where_invalid(out, valid)
    if out.dtype != self.compute_dtype:
      out = tf.cast(out, self.compute_dtype)
    return out

  def compute_mask(self, inputs, mask=None):
    if not self.mask_zero:
      return None
    # keras.ops, not tf: functional models call this on symbolic inputs.
    padding = "" if tf.as_dtype(inputs.dtype) == tf.string else 0
    return keras.ops.not_equal(inputs, padding)

  def compute_output_shape(self, input_shape):
    return (*input_shape, self.output_dim)

  def compute_output_spec(self, inputs):
    return keras.KerasTensor(
        self.compute_output_shape(inputs.shape), dtype=self.compute_dtype
    )

  def get_config(self):
    """The layer's config; dims are stored resolved, so a reload never
    depends on how `multihash_dims` sizes tables."""
    config = super().get_config()
    arg = self._initializer_arg
    if arg is None:
      init = None
    elif isinstance(arg, (list, tuple)):
      init = [keras.initializers.serialize(i) for i in self._initializers]
    else:
      init = keras.initializers.serialize(self._initializers[0])
    config.update(
        {
            "num_ids": self.num_ids,
            "dims": [list(d) for d in self.dims],
            "operation": self.operation,
            "complementary_strategy": self.complementary_strategy,
            "out_of_range": self.out_of_range,
            "hash_strings": self.hash_strings,
            "embeddings_initializer": init,
            "embeddings_regularizer": keras.regularizers.serialize(
                self.embeddings_regularizer
            ),
            "embeddings_constraint": keras.constraints.serialize(
                self.embeddings_constraint
            ),
            "mask_zero": self.mask_zero,
        }
    )
    return config
