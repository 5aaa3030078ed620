"""Day-2 operations on a running store's nodes: drain (``drain``), and add, replace and remove a
node (``nodes``), each one store at a time, inside its maintenance window."""
