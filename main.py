"""protoseg_jax's trainer in a checkout: see protoseg_jax/main.py (also `python -m protoseg_jax`).

  python main.py --config=configs/demo.py --workdir=/tmp/protoseg_demo
  python main.py --config=CONFIG --workdir=DIR --mode=eval|predict ...
"""

from protoseg_jax.main import run

if __name__ == "__main__":
  run("main.py")
