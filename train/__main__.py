"""`python -m train COMMAND ...` is `normgpt COMMAND ...` (train/commands.py); it lets accelerate start the front
door as a module: `accelerate launch -m train train --norm rms`."""

import sys

from train.commands import main

sys.exit(main())
