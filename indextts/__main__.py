from indextts.cli import entry

entry()
