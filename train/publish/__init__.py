"""Publishing a finished run: the model a user gets, its card, its GGUF files, its upload.

    stock.py         which stock transformers class computes what a model computes (the norm's registry entry says)
    export.py        the verified export (stock class, or normgpt's remote code), recorded in export.json
    gguf.py          GGUF files of a stock export, for llama.cpp, Ollama and LM Studio
    model_card.py    README.md and LICENSE of a model directory
    license.py       normgpt's license: its SPDX id and its text (apache-2.0.txt, package data)
    hub.py           the upload of exactly a model directory's model files; `normgpt push`
    final_model.py   the trainer's final-model step: save, export, publish into the run directory, card, upload
    command.py       `normgpt export`

It reads runs only through train/run_directory.py.
"""
