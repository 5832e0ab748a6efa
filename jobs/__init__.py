"""Entry points for `ray job submit` (one thin main(argv) per stage)."""
