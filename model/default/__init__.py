"""The packaged default model: config.json, model.safetensors and tokenizer.json, trained by the
project (scripts/make_agent_data.py, model/training/train.py; see README "The default model").
A package only so that setuptools ships these files; there is no code here."""
