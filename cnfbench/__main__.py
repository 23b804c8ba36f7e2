"""``python -m cnfbench`` runs the command line."""

from cnfbench.cli import main

if __name__ == "__main__":
    main()
