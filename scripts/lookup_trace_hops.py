# Temporary (issue 15): joins the KVS_LTRACE=PREFIX files of a bench run into per-hop latencies.
# usage: /usr/bin/python3 scripts/lookup_trace_hops.py PREFIX [slow_ns]
import sys,glob,statistics as S
ev={}
polls=[]
for f in glob.glob(sys.argv[1]+'.*'):
    for l in open(f):
        p=l.split()
        if len(p)!=5: continue
        pid,tid,e,rid,ns=p; rid=int(rid); ns=int(ns)
        if e.startswith('P_'):
            polls.append((ns,e,pid)); continue
        ev.setdefault(rid,{})[e]=ns
polls.sort()
import bisect
pt=[p[0] for p in polls]
hops={k:[] for k in ['R0->Hpoll','Hpoll->H1','H1->H2b','H2b->R3am','R3b->R4','total']}
for rid,d in ev.items():
    if not all(k in d for k in ['R0_send','H1_am','H2b_sent','R3_am','R3b_deliver','R4_woke']): continue
    # holder pollret between R0 and H1 (last one before H1)
    i=bisect.bisect_left(pt,d['H1_am'])-1
    hp=None
    while i>=0 and pt[i]>=d['R0_send']:
        if polls[i][1]=='P_pollret': hp=pt[i]; break
        i-=1
    if hp is None: hp=d['R0_send']
    hops['R0->Hpoll'].append(hp-d['R0_send']); hops['Hpoll->H1'].append(d['H1_am']-hp)
    hops['H1->H2b'].append(d['H2b_sent']-d['H1_am']); hops['H2b->R3am'].append(d['R3_am']-d['H2b_sent'])
    hops['R3b->R4'].append(d['R4_woke']-d['R3b_deliver']); hops['total'].append(d['R4_woke']-d['R0_send'])
own=0;tot=0
for rid,d in ev.items(): pass
for k,v in hops.items():
    v=sorted(v); n=len(v)
    print(f"{k:12s} n={n} p50={v[n//2]/1e3:8.1f}us mean={sum(v)/n/1e3:8.1f}us p90={v[int(n*.9)]/1e3:8.1f}us")
# who received replies
tids={}
for f in glob.glob(sys.argv[1]+'.*'):
    for l in open(f):
        p=l.split()
        if len(p)==5 and p[2] in('R0_send','R3_am'): tids.setdefault(p[2],{}).setdefault(p[1],0); tids[p[2]][p[1]]+=1
print('R0 tids',tids.get('R0_send'),'R3_am tids',tids.get('R3_am'))
if len(sys.argv)>2:
    bad=[]
    for rid,d in ev.items():
        if all(k in d for k in ['R0_send','H1_am','H2b_sent','R3_am','R3b_deliver','R4_woke']) and d['R4_woke']-d['R0_send']>int(sys.argv[2]):
            b=d['R0_send']
            bad.append((rid,[(k,(v-b)//1000) for k,v in sorted(d.items(),key=lambda x:x[1])]))
    for x in bad[:12]: print(x)
    print(len(bad),'slow')
