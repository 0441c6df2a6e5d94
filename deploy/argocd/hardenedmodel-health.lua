-- Argo CD health check for hardened.dev/HardenedModel.
-- Install: resource.customizations.health.hardened.dev_HardenedModel in argocd-cm (see docs/install.md).
-- Healthy only when the operator has seen the current spec (observedGeneration == generation, on the
-- status and on the Ready condition) and reports Ready=True; Argo CD therefore waits for training,
-- verification and rollout of every spec change instead of trusting a Ready left over from the last one.
hs = {}
if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick the model up"
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
local ready = nil
if obj.status.conditions ~= nil then
  for _, condition in ipairs(obj.status.conditions) do
    if condition.type == "Ready" then
      ready = condition
    end
  end
end
if ready == nil or (generation ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration ~= generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition of generation " .. tostring(generation)
  return hs
end
local phase = obj.status.phase or ""
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Serving"
  return hs
end
-- Not ready. Failed, an invalid spec or a missing Secret/PVC need a person; the rest is work in progress.
if phase == "Failed" or ready.reason == "InvalidSpec" or ready.reason == "PrerequisiteMissing" then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
hs.message = phase .. ": " .. (ready.message or ready.reason or "not ready")
return hs
