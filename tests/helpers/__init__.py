"""What many tests share: tiny models of every family built from configs (`tiny_models`), a hand-built
bag-of-words target for explainers (`toy_target`), and running the CLI in-process (`cli`)."""
