"""``python -m minibert.tokenizer``: show every stage of tokenizing a text."""
import sys

from minibert.tokenizer.basic import main

sys.exit(main())
