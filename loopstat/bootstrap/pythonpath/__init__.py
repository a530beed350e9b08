"""Not meant to be imported: a package only so that ``sitecustomize.py`` ships in the wheel."""
