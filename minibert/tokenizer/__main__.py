"""``python -m minibert.tokenizer [--vocab DIR_OR_VOCAB_TXT] [--cased] [--pair TEXT] TEXT``: show every stage."""
import sys

from minibert.tokenizer.show import main

sys.exit(main())
