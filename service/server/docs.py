"""A self-contained API documentation page: no assets from a CDN, rendered in the browser from /openapi.json."""

__all__ = ["DOCS_HTML"]

DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>roiconv API</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:60em;padding:0 1em;color:#222}
h2{border-bottom:1px solid #ccc;padding-bottom:.2em}
.op{border:1px solid #ddd;border-radius:6px;margin:1em 0;padding:.6em 1em}
.m{font-weight:bold;display:inline-block;min-width:4em}.get{color:#0a6}.post{color:#06c}
pre{background:#f6f6f6;padding:.6em;overflow:auto;font-size:.85em}
form label{display:block;margin:.3em 0}
</style></head>
<body>
<h1>roiconv API</h1>
<p>Served offline by the server itself. The machine-readable description is at
<a href="/openapi.json">/openapi.json</a>; the filter catalog with each filter's JSON schema at
<a href="/filters">/filters</a>.</p>
<h2>Try POST /convolve</h2>
<form id="try">
<label>image <input type="file" name="image" required></label>
<label>mask (optional) <input type="file" name="mask"></label>
<label>spec <textarea name="spec" rows="4" cols="70">{"filter": {"name": "gaussian"},
 "roi": {"boxes": [[10, 10, 120, 90]]}}</textarea></label>
<p>The gaussian's <code>ksize</code> defaults to <code>"auto"</code>: sized to each ROI shape, enough to hide a face
of that size. Draw the regions on an image at <a href="/">the page</a>.</p>
<label>X-API-Key (if the server needs one) <input name="key"></label>
<button>Send</button>
</form>
<pre id="result">(no request sent yet)</pre>
<h2>Endpoints</h2><div id="ops">loading /openapi.json ...</div>
<h2>Schemas</h2><div id="schemas"></div>
<script>
function el(tag, cls, text){
  const e=document.createElement(tag); if(cls)e.className=cls; if(text!==undefined)e.textContent=text; return e;
}
// a description's `code` spans (CommonMark) as <code>; the rest stays text
function prose(tag, text){
  const e=el(tag);
  text.split('`').forEach((part,i)=>e.appendChild(i%2?el('code','',part):document.createTextNode(part)));
  return e;
}
fetch('/openapi.json').then(r=>r.json()).then(api=>{
  const ops=document.getElementById('ops'); ops.textContent='';
  for(const [path, methods] of Object.entries(api.paths||{})){
    for(const [method, op] of Object.entries(methods)){
      const box=el('div','op'); const head=el('div');
      head.appendChild(el('span','m '+method, method.toUpperCase())); head.appendChild(el('code','',path));
      box.appendChild(head);
      if(op.summary) box.appendChild(prose('p',op.summary));
      if(op.description) box.appendChild(prose('p',op.description));
      if(op.requestBody) box.appendChild(el('pre','',JSON.stringify(op.requestBody.content,null,1)));
      const codes=Object.entries(op.responses||{}).map(([c,r])=>c+': '+(r.description||''));
      box.appendChild(el('pre','',codes.join('\\n')));
      ops.appendChild(box);
    }
  }
  const sch=document.getElementById('schemas');
  for(const [name, s] of Object.entries((api.components||{}).schemas||{})){
    const d=el('details'); d.appendChild(el('summary','',name));
    d.appendChild(el('pre','',JSON.stringify(s,null,1))); sch.appendChild(d);
  }
}).catch(e=>{document.getElementById('ops').textContent='could not load /openapi.json: '+e;});
document.getElementById('try').addEventListener('submit', async ev=>{
  ev.preventDefault(); const f=ev.target; const fd=new FormData();
  fd.append('image', f.image.files[0]); if(f.mask.files[0]) fd.append('mask', f.mask.files[0]);
  fd.append('spec', f.spec.value);
  const headers=f.key.value?{'X-API-Key':f.key.value}:{};
  const out=document.getElementById('result'); out.textContent='sending ...';
  const r=await fetch('/convolve',{method:'POST',body:fd,headers});
  const info=[...r.headers].filter(([k])=>k.startsWith('x-')).map(([k,v])=>k+': '+v).join('\\n');
  if(r.ok && r.headers.get('content-type').startsWith('image/')){
    const img=el('img'); img.src=URL.createObjectURL(await r.blob());
    out.textContent=r.status+'\\n'+info+'\\n'; out.appendChild(img);
  } else { out.textContent=r.status+'\\n'+info+'\\n'+await r.text(); }
});
</script>
</body></html>
"""
