import json
from dataclasses import dataclass, field


@dataclass
class Item:
    name: str
    price: float
    quantity: int = 0
    tags: list[str] = field(default_factory=list)

    def total_value(self) -> float:
        return self.price * self.quantity


class Inventory:
    def __init__(self):
        self.items = {}

    def add(self, name, price, quantity=0, tags=None):
        if name in self.items:
            raise ValueError(f"item {name} already exists")
        self.items[name] = Item(name, price, quantity, tags or [])

    def remove(self, name):
        if name not in self.items:
            raise KeyError(name)
        del self.items[name]

    def restock(self, name, amount):
        item = self.items[name]
        if amount <= 0:
            raise ValueError("amount must be positive")
        item.quantity += amount
        return item.quantity

    def sell(self, name, amount):
        item = self.items[name]
        if amount > item.quantity:
            raise ValueError(f"only {item.quantity} of {name} left")
        item.quantity -= amount
        return item.price * amount

    def total_value(self):
        return sum(item.total_value() for item in self.items.values())

    def find_by_tag(self, tag):
        return [item for item in self.items.values() if tag in item.tags]

    def low_stock(self, threshold=5):
        return sorted(
            (item for item in self.items.values() if item.quantity < threshold), key=lambda item: item.quantity
        )

    def save(self, path):
        data = [
            {"name": item.name, "price": item.price, "quantity": item.quantity, "tags": item.tags}
            for item in self.items.values()
        ]
        with open(path, "w") as f:
            json.dump(data, f, indent=2)

    @classmethod
    def load(cls, path):
        inventory = cls()
        with open(path) as f:
            for entry in json.load(f):
                inventory.add(entry["name"], entry["price"], entry["quantity"], entry["tags"])
        return inventory
