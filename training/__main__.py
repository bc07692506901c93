"""``python -m training`` runs the ``ortho-train`` CLI (also under ``torchrun -m training``)."""

from training.cli import main

if __name__ == "__main__":
    main()
