"""Write tests/data/reference_outputs.pt: outputs of every option combination on fixed, name-seeded weights."""
import itertools, zlib, torch
from latte.models import create_model

def randomize_by_name(model, seed=0, std=0.1):
    with torch.no_grad():
        for name, p in model.named_parameters():
            gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model

refs = {}
gen = torch.Generator().manual_seed(0)
x = torch.randn(1, 4, 4, 8, 8, generator=gen)
t = torch.tensor([321])
y = torch.tensor([[2]])
x_joint = torch.randn(1, 4, 6, 8, 8, generator=gen)
y_joint = torch.tensor([[2, 0, 1]])
for v, pe, c, tp in itertools.product((1, 2, 3, 4), ("frame", "tubelet"), ("adaln", "tokens"), ("absolute", "rope")):
    model = randomize_by_name(create_model("Latte-T/2", num_frames=4, input_size=8, num_classes=3, variant=v,
                                           patch_embed=pe, conditioning=c, temporal_pos=tp)).eval()
    with torch.no_grad():
        refs[f"{v}-{pe}-{c}-{tp}"] = model(x, t, y[:, 0]).clone()
        if pe == "frame":
            refs[f"{v}-{pe}-{c}-{tp}-joint"] = model(x_joint, t, y_joint, num_images=2).clone()
torch.save({"inputs": {"x": x, "t": t, "y": y[:, 0], "x_joint": x_joint, "y_joint": y_joint}, "outputs": refs},
           "tests/data/reference_outputs.pt")
print(len(refs))
