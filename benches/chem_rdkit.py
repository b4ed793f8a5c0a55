"""Reference for `molclip bench chem`: RDKit doing what molclip-chem does.

For each oracle SMILES: parse and sanitise, canonical SMILES, per-atom and
per-bond features, Morgan radius 2 / 2048 bits. Prints the best wall time
of N repeats, in seconds. Usage: python3 benches/chem_rdkit.py ORACLE.jsonl [N]
"""
import json
import sys
import time

from rdkit import Chem, RDLogger
from rdkit.Chem import rdFingerprintGenerator

RDLogger.DisableLog("rdApp.*")


def featurize(smiles, gen):
    mol = Chem.MolFromSmiles(smiles)
    canonical = Chem.MolToSmiles(mol)
    atoms = [
        [a.GetAtomicNum(), a.GetDegree(), a.GetFormalCharge(), a.GetTotalNumHs(),
         int(a.GetIsAromatic()), str(a.GetHybridization()), int(a.IsInRing()), str(a.GetChiralTag())]
        for a in mol.GetAtoms()
    ]
    bonds = [
        [b.GetBeginAtomIdx(), b.GetEndAtomIdx(), str(b.GetBondType()), int(b.GetIsConjugated()),
         int(b.IsInRing()), str(b.GetStereo())]
        for b in mol.GetBonds()
    ]
    bits = list(gen.GetFingerprint(mol).GetOnBits())
    return canonical, atoms, bonds, bits


def main():
    path = sys.argv[1]
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    smiles = [json.loads(line)["smiles"] for line in open(path)]
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for s in smiles:
            featurize(s, gen)
        best = min(best, time.perf_counter() - start)
    print(f"{best:.6f}")


if __name__ == "__main__":
    main()
