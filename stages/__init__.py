"""The five DVC stage entry points (`python -m stages.<stage>`); nothing imports them."""
