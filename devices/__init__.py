"""Device models. They plug into the machine through `board.interfaces` only and never
touch Unicorn."""
