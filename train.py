"""python train.py model=vit freeze=gradual  (see README; same as `ftlab-train`)."""

from ftlab.cli import train_main

if __name__ == "__main__":
    train_main()
