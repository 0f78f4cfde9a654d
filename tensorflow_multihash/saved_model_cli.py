"""TensorFlow's `saved_model_cli` with the multi-hash op library loaded.

`saved_model_cli run` (and `show --all`, `scan`, ...) loads a SavedModel in a
process that knows TensorFlow's own ops only, so a model that uses the
multi-hash lookup fails there with "Op type not registered
'MultiHashLookup'". This module loads the op library, then hands the command
line, unchanged, to TensorFlow's own `saved_model_cli`:

    python -m tensorflow_multihash.saved_model_cli show --dir export --all
    python -m tensorflow_multihash.saved_model_cli run --dir export \\
        --tag_set serve --signature_def serving_default \\
        --input_exprs 'inputs=[[1, 2, 3]]'

Every subcommand and flag is TensorFlow's (`--help` lists them).
"""

import sys


def main(argv=None):
  """Loads the op library and runs TensorFlow's saved_model_cli.

  Args:
    argv: the command line after the program name; None for `sys.argv[1:]`.

  Returns:
    What TensorFlow's `saved_model_cli.main` returns (it exits through absl,
    which raises SystemExit with the status).
  """
  from tensorflow_multihash import op_library  # pylint: disable=g-import-not-at-top

  op_library.load()
  from tensorflow.python.tools import saved_model_cli  # pylint: disable=g-import-not-at-top

  sys.argv = ["saved_model_cli"] + list(sys.argv[1:] if argv is None else argv)
  return saved_model_cli.main()


if __name__ == "__main__":
  sys.exit(main())
