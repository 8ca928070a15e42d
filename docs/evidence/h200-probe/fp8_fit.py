# fp8_fit.py: the exploratory fitter that found the H200 FP8 models (docs/tensor-cores.md).
# Usage: FD_PROBE_DIR=<unpacked probe.tar.xz>/probe python3 fp8_fit.py mma-e4m3-k32 wgmma-e5m2-k128 ...
# Exact rational sums (fractions); prints blocks reproduced per set and per category.
import struct, os
from fractions import Fraction as Fr
P=os.environ.get("FD_PROBE_DIR", "probe")
def f32(h): return struct.unpack('>f', bytes.fromhex(h))[0]
def bits2f(s): return struct.unpack('>f', int(s,2).to_bytes(4,'big'))[0]
def load(name):
    d=os.path.join(P,name)
    fmt='e4m3' if 'e4m3' in name else 'e5m2'
    A=[[f32(w) for w in l.split()] for l in open(f'{d}/a_H200_{fmt}.txt')]
    B=[[f32(w) for w in l.split()] for l in open(f'{d}/b_H200_{fmt}.txt')]
    C=[bits2f(l.strip()) for l in open(f'{d}/c_H200_fp32.txt')]
    D=[bits2f(l.strip()) for l in open(f'{d}/d_H200_fp32.txt')]
    K=[l.strip() for l in open(f'{d}/kind_H200.txt')]
    return A,B,C,D,K,fmt
import math, struct
from fractions import Fraction as Fr
def expo(x, emin):
    if x==0: return None
    m,e=math.frexp(abs(x)); return max(e-1, emin)
def trunc_to(x, q):  # x Fraction, truncate toward zero to multiple of 2^q
    s = x / (Fr(2)**q) if q>=0 else x*(2**(-q))
    n = math.floor(abs(s)) * (1 if s>=0 else -1)
    return Fr(n)*(Fr(2)**q)
def rnd_to(x,q, mode):
    if mode=='rz': return trunc_to(x,q)
    s = x*(Fr(2)**(-q)); 
    if mode=='rn':
        fl=math.floor(s); r=s-fl
        if r>Fr(1,2) or (r==Fr(1,2) and fl%2==1): fl+=1
        return Fr(fl)*(Fr(2)**q)
    if mode=='rd': return Fr(math.floor(s))*(Fr(2)**q)
    if mode=='ru': return Fr(math.ceil(s))*(Fr(2)**q)
def round_p(x, p, mode, emin=-126):  # round to p-bit float
    if x==0: return Fr(0)
    e = math.floor(math.log2(abs(x)))  # may be off by one for fractions
    while Fr(2)**e > abs(x): e-=1
    while Fr(2)**(e+1) <= abs(x): e+=1
    e=max(e,emin)
    return rnd_to(x, e-p+1, mode)
def f32bits(x): return struct.unpack('>I', struct.pack('>f', x))[0]
EMIN={'e4m3':-6,'e5m2':-14}
def block(a,b,c,F,mode='rz',cin=True,out='rz', emin_in=-6, cF=None):
    # products + c, E = max exponent, truncate each to 2^(E-F), sum, round 24 bits
    terms=[]; es=[]
    for x,y in zip(a,b):
        if x==0 or y==0: continue
        terms.append(Fr(x)*Fr(y)); es.append(expo(x,emin_in)+expo(y,emin_in))
    if cin and c!=0:
        terms.append(Fr(c)); es.append(expo(c,-126))
    if not terms: return Fr(0) if cin else Fr(c)
    E=max(es)
    s=sum(rnd_to(t,E-F,mode) for t in terms)
    r=round_p(s,24,out)
    if not cin: r=round_p(r+Fr(c),24,out)
    return r
import sys, collections
P0=[i for i in range(32) if (i//2)%2==0]; P1=[i for i in range(32) if (i//2)%2==1]
def mma_inst(a,b,c,em):
    t=0.0
    for p in (P0,P1):
        t=float(block([a[j] for j in p],[b[j] for j in p],t,25,emin_in=em))
    return float(round_p(Fr(t)+Fr(c),24,'rn'))
def wg_inst(a,b,c,em,F=13,p=14):
    terms=[];es=[]
    for x,y in zip(a,b):
        if x==0 or y==0: continue
        terms.append(Fr(x)*Fr(y)); es.append(expo(x,em)+expo(y,em))
    if c!=0: terms.append(Fr(c)); es.append(expo(c,-126))
    if not terms: return 0.0
    E=max(es)
    s=sum(rnd_to(t,E-F,'rz') for t in terms)
    return float(round_p(s,p,'rz'))
for name in sys.argv[1:]:
    A,B,C,D,K,f=load(name); em=EMIN[f]
    fn=mma_inst if name.startswith('mma') else wg_inst
    ok=collections.Counter(); tot=collections.Counter(); fails=[]
    for i in range(len(A)):
        r=C[i]
        for j in range(0,len(A[0]),32): r=fn(A[i][j:j+32],B[i][j:j+32],r,em)
        tot[K[i]]+=1
        if f32bits(r)==f32bits(D[i]): ok[K[i]]+=1
        else: fails.append(i)
    print(name, sum(ok.values()),'/',len(A), ' '.join(f'{k}:{ok[k]}/{tot[k]}' for k in tot), 'fails', fails[:15], flush=True)
