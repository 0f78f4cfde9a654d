"""`MultiHashEmbedding`: a Keras 3 layer over the fused multi-hash lookup.

Reach it as `tensorflow_multihash.keras.MultiHashEmbedding` (or import it from
this module). It needs Keras 3 with the TensorFlow backend.

The layer owns k small tables (Keras weights `multhash_Q` and `multhash_R` for
k = 2, the names DeepRec's variables use) and looks ids up with the
`MultiHashLookup` op, which reads the tables in place and whose gradient
reaches each table as a `tf.IndexedSlices` (the distinct rows the batch
touched). What a Keras optimizer then does with those rows depends on the
optimizer, see the class docstring.

Loading a `.keras` file that holds the layer needs the class registered:
import this module (or touch `tensorflow_multihash.keras`) before
`keras.saving.load_model`. `import tensorflow_multihash` does that by itself
whenever Keras was already imported, as `import tensorflow` does.
"""

import math
import numbers

import keras
import tensorflow as tf

from tensorflow_multihash import multihash_ops
from tensorflow_multihash import variable as variable_lib

if int(keras.__version__.split(".")[0]) < 3:
  raise ImportError(
      "tensorflow_multihash.keras needs Keras 3, found keras %s" %
      keras.__version__)


def _is_positive_int(value):
  return (not isinstance(value, bool) and isinstance(value, numbers.Integral)
          and value > 0)


def _capacity(dims):
  """Ids the tables address without wrapping: the product of the row counts
  (for every strategy; "CRT" row counts are pairwise coprime)."""
  return math.prod(rows for rows, _ in dims)


@keras.saving.register_keras_serializable(package="tensorflow_multihash")
class MultiHashEmbedding(keras.layers.Layer):
  """Embeds integer ids through k small tables combined by add, mul or concat.

  A drop-in for `keras.layers.Embedding` whose memory is the sum of the small
  tables instead of `num_ids * output_dim`. With the "Q-R" strategy (k = 2)
  id x reads row `x // rows_R` of table Q and row `x % rows_R` of table R, a
  pair unique to x for every x below `rows_Q * rows_R` (the capacity), and
  the two rows are combined by `operation`.

  Give either `dims` (the [rows, width] of every table) or `num_ids` and
  `output_dim` (and optionally `num_collisions`), which are turned into dims
  by `tensorflow_multihash.multihash_dims`.

  Sparse updates: the gradient reaches each table as a `tf.IndexedSlices` of
  the distinct rows in the batch. Among Keras 3 optimizers (TensorFlow
  backend) only plain `SGD` (no momentum) applies it with scatter updates,
  so rows no id touched stay bit-for-bit unchanged; SGD with momentum, Adam
  and others densify it and rewrite whole tables and slots each step, and
  Adagrad scatters but computes over its whole accumulator (the project
  README, "Training with Keras 3 optimizers", has the measurements). The
  tables are small, so the dense cost is modest. An `embeddings_regularizer`
  adds a dense gradient over whole tables and `embeddings_constraint` is
  applied to whole tables, so either one makes updates dense too.

  Args:
    num_ids: the number of distinct ids (ids are in [0, num_ids)). Required
      without `dims`; with `dims` it is optional and, when `out_of_range` is
      "error", must not exceed the capacity.
    output_dim: width of an embedding. Required without `dims`; with `dims`
      it must equal the width the dims give, if set.
    dims: a list of k [rows, width] pairs, first Q then R for "Q-R". For
      "add"/"mul" the widths are equal and are the output width; for
      "concat" the output width is their sum.
    num_collisions: with `num_ids`, passed to `multihash_dims`
      (DLRM-style sizing: the remainder table gets `num_collisions` rows and
      the quotient table `ceil(num_ids / num_collisions)`). Not allowed with
      `dims`.
    operation: "add", "mul" (alias "mult") or "concat".
    complementary_strategy: how ids pick rows; "Q-R" for k = 2, or any
      strategy `multihash_ops.multihash_lookup` supports.
    num_of_partitions: the number of small tables k, for `num_ids` (default
      2); with `dims` it must equal `len(dims)` if set.
    out_of_range: "error" (an id outside [0, capacity) makes the lookup fail
      with `tf.errors.InvalidArgumentError`) or "wrap" (ids are taken modulo
      the capacity first, so tables smaller than the vocabulary work as a
      hashed embedding).
    embeddings_initializer: a Keras initializer (name, dict or object) for
      every table, or a list of k of them, one per table. Default "uniform",
      as `keras.layers.Embedding`.
    embeddings_regularizer: a Keras regularizer applied to every table.
    embeddings_constraint: a Keras constraint applied to every table.
    mask_zero: if True, id 0 is padding: `compute_mask` returns `ids != 0`
      (id 0 is still looked up, as in `keras.layers.Embedding`).
    **kwargs: base `keras.layers.Layer` arguments (name, dtype, trainable...).

  Raises:
    ValueError: a missing, conflicting or malformed size argument, an unknown
      operation, strategy or `out_of_range`, or a wrong number of
      initializers; the message names the argument and its value.

  Call arguments:
    inputs: integer ids of any shape (int32 and int64 are used as they are,
      other integer dtypes are cast to int64; floats are a `TypeError`).

  Output: `inputs.shape + [output_dim]`, in the layer's compute dtype.
  """

  def __init__(self,
               num_ids=None,
               output_dim=None,
               *,
               dims=None,
               num_collisions=None,
               operation="mul",
               complementary_strategy="Q-R",
               num_of_partitions=None,
               out_of_range="error",
               embeddings_initializer="uniform",
               embeddings_regularizer=None,
               embeddings_constraint=None,
               mask_zero=False,
               **kwargs):
    super().__init__(**kwargs)
    operation = multihash_ops.canonical_operation(operation)
    multihash_ops.check_strategy(complementary_strategy)
    multihash_ops.check_out_of_range(out_of_range)
    if num_ids is not None and not _is_positive_int(num_ids):
      raise ValueError("num_ids must be a positive integer, got %r" %
                       (num_ids,))
    if output_dim is not None and not _is_positive_int(output_dim):
      raise ValueError("output_dim must be a positive integer, got %r" %
                       (output_dim,))

    if dims is None:
      if num_ids is None or output_dim is None:
        raise ValueError(
            "give either dims or both num_ids and output_dim, got dims=None, "
            "num_ids=%r, output_dim=%r" % (num_ids, output_dim))
      from tensorflow_multihash import sizing  # pylint: disable=g-import-not-at-top
      dims = sizing.multihash_dims(
          num_ids, output_dim,
          num_of_partitions=2 if num_of_partitions is None
          else num_of_partitions,
          complementary_strategy=complementary_strategy,
          operation=operation, num_collisions=num_collisions)
    elif num_collisions is not None:
      raise ValueError("num_collisions sizes the tables from num_ids; it "
                       "cannot be combined with dims, got num_collisions=%r"
                       % (num_collisions,))
    if num_of_partitions is None:
      num_of_partitions = len(dims) if isinstance(dims, (list, tuple)) else 2
    dims, operation = variable_lib.validate_config(
        dims, num_of_partitions, complementary_strategy, operation)

    widths = [w for _, w in dims]
    width = sum(widths) if operation == "concat" else widths[0]
    if output_dim is not None and output_dim != width:
      raise ValueError("output_dim=%r does not match dims %s, whose output "
                       "width for %r is %d" % (output_dim, dims, operation,
                                               width))
    capacity = _capacity(dims)
    if (num_ids is not None and out_of_range == "error" and
        num_ids > capacity):
      raise ValueError(
          "num_ids=%d exceeds the capacity %d of dims %s; give bigger dims "
          "or out_of_range=\"wrap\"" % (num_ids, capacity, dims))

    initializers = embeddings_initializer
    if not isinstance(initializers, (list, tuple)):
      initializers = [initializers] * len(dims)
    elif len(initializers) != len(dims):
      raise ValueError(
          "embeddings_initializer must be one initializer or a list of %d "
          "(one per table), got a list of %d" % (len(dims),
                                                  len(initializers)))
    self._initializers = [keras.initializers.get(i) for i in initializers]
    self._single_initializer = not isinstance(embeddings_initializer,
                                              (list, tuple))

    self.num_ids = num_ids
    self.dims = dims
    self.output_dim = width
    self.capacity = capacity
    self.operation = operation
    self.complementary_strategy = complementary_strategy
    self.out_of_range = out_of_range
    self.embeddings_regularizer = keras.regularizers.get(
        embeddings_regularizer)
    self.embeddings_constraint = keras.constraints.get(embeddings_constraint)
    self.mask_zero = mask_zero
    self.supports_masking = mask_zero
    # The op reads the float32 tables in place; autocasting would copy each
    # whole table to the compute dtype every step. The output is cast.
    self.autocast = False
    self.tables = []

  @property
  def embeddings_initializer(self):
    if self._single_initializer:
      return self._initializers[0]
    return list(self._initializers)

  def build(self, input_shape=None):
    if self.built:
      return
    self.tables = [
        self.add_weight(
            shape=(rows, width), initializer=init, name=name,
            regularizer=self.embeddings_regularizer,
            constraint=self.embeddings_constraint, trainable=True)
        for (rows, width), init, name in zip(
            self.dims, self._initializers, variable_lib.table_suffixes(len(self.dims)))
    ]
    self.built = True

  def _ids(self, inputs):
    """`inputs` as an int32/int64 tensor."""
    if isinstance(inputs, (tf.SparseTensor, tf.RaggedTensor)):
      raise TypeError("MultiHashEmbedding takes dense integer ids, got a %s "
                      "as inputs" % type(inputs).__name__)
    ids = inputs if tf.is_tensor(inputs) else tf.convert_to_tensor(inputs)
    if ids.dtype in (tf.int32, tf.int64):
      return ids
    if ids.dtype.is_integer:
      return tf.cast(ids, tf.int64)
    raise TypeError("MultiHashEmbedding inputs must be integer ids, got "
                    "dtype %s" % ids.dtype.name)

  def call(self, inputs):
    ids = self._ids(inputs)
    # `.value` is the backing tf.Variable (or, inside a stateless scope, the
    # scope's tensor): the op then reads the resource in place and the tape
    # records the read, so the gradient reaches the Keras weight.
    tables = [w.value for w in self.tables]
    out = multihash_ops.multihash_lookup(
        tables, ids, operation=self.operation,
        complementary_strategy=self.complementary_strategy,
        out_of_range=self.out_of_range)
    if out.dtype != self.compute_dtype:
      out = tf.cast(out, self.compute_dtype)
    return out

  def compute_mask(self, inputs, mask=None):
    if not self.mask_zero:
      return None
    # keras.ops, not tf: functional models call this on symbolic inputs.
    return keras.ops.not_equal(inputs, 0)

  def compute_output_shape(self, input_shape):
    return (*input_shape, self.output_dim)

  def compute_output_spec(self, inputs):
    return keras.KerasTensor(self.compute_output_shape(inputs.shape),
                             dtype=self.compute_dtype)

  def get_config(self):
    """The layer's config; dims are stored resolved, so a reload never
    depends on how `multihash_dims` sizes tables."""
    config = super().get_config()
    if self._single_initializer:
      init = keras.initializers.serialize(self._initializers[0])
    else:
      init = [keras.initializers.serialize(i) for i in self._initializers]
    config.update({
        "num_ids": self.num_ids,
        "dims": [list(d) for d in self.dims],
        "operation": self.operation,
        "complementary_strategy": self.complementary_strategy,
        "out_of_range": self.out_of_range,
        "embeddings_initializer": init,
        "embeddings_regularizer": keras.regularizers.serialize(
            self.embeddings_regularizer),
        "embeddings_constraint": keras.constraints.serialize(
            self.embeddings_constraint),
        "mask_zero": self.mask_zero,
    })
    return config
