"""python eval.py ckpt_path=... data=digits  (see README; same as `ftlab-eval`)."""

from ftlab.cli import eval_main

if __name__ == "__main__":
    eval_main()
